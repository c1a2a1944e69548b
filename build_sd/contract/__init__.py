"""The contract between build_sd's stages and between the build machine and the board.

One typed record per file build_sd writes, each with `read(path)` (a one-line UserError naming
the file and the first bad field) and `write(path)` (atomic); the schema versions of all of
them (base.SCHEMAS); the architecture record the planner and the exporter read (ModelConfig);
and the naming of subgraphs, functions and KV-cache parameters (names.py). Both sides import
this package; it imports nothing of build_sd but the errors and file helpers.

  file                       record              written by             read by
  export.json                ExportRecord        export                 compile, validate, bundle, runtime
  artifacts manifest.json    ArtifactsManifest   compile                bundle, validate, profile, build
  bundle manifest.json       BundleManifest      bundle                 run, verify, profile, pack, push
  plan.json                  Plan                plan, build            build, bench
  profile.json               Profile             profile                plan, build, bench
  calib.json                 Calibration         calibrate              plan, build
  pack.json (in archives)    PackManifest        pack --wheels          the board's installer
"""
from .artifacts import ArtifactsManifest, Compiler, FileInfo, ModuleFile, PresetRecord
from .base import SCHEMAS, Record, convert, schema_of
from .bundle import (CPU_DRIVERS, BundleFile, BundleManifest, BundleModel, BundleModels, IreeVersions,
                     ModelFiles, ModuleRef, Overlap)
from .calibration import Acceptance, Calibration
from .config import ModelConfig, RopeConfig
from .golden import GoldenCase, GoldenStep, ModuleDigest
from .export import (ExportRecord, FunctionRecord, KVParam, Parameters, Source, SubgraphRecord, TensorShape,
                     TensorSpec)
from .host import HostInfo, HostProbe
from .names import PARAM_SCOPE, ROLES, SubgraphSpec, function_name, kv_param_name, layout_name, subgraph_specs
from .pack import PackManifest, WheelFile
from .plan import Placement, Plan, PlanConfig, PlanDevice, PlanModel
from .profile import ContentionFit, FnStats, HostCost, Machine, ProfiledModel, ProfiledSubgraph, Profile, TransferFit

__all__ = [
    "GoldenCase", "GoldenStep", "ModuleDigest",
    "ArtifactsManifest", "Compiler", "FileInfo", "ModuleFile", "PresetRecord", "SCHEMAS", "Record",
    "convert", "schema_of", "CPU_DRIVERS", "BundleFile", "BundleManifest", "BundleModel",
    "BundleModels", "IreeVersions", "ModelFiles", "ModuleRef", "Overlap", "Acceptance", "Calibration",
    "ModelConfig", "RopeConfig", "ExportRecord", "FunctionRecord", "KVParam", "Parameters",
    "Source", "SubgraphRecord", "TensorShape", "TensorSpec", "HostInfo", "HostProbe", "PARAM_SCOPE", "ROLES",
    "SubgraphSpec", "function_name", "kv_param_name", "layout_name", "subgraph_specs",
    "PackManifest", "WheelFile", "Placement", "Plan", "PlanConfig", "PlanDevice", "PlanModel",
    "ContentionFit", "FnStats", "HostCost", "Machine", "ProfiledModel", "ProfiledSubgraph", "Profile", "TransferFit",
]
