"""`build-sd export`: cut a checkpoint into subgraphs and export each with iree-turbine -> mlir/NAME.

Output folder:
  {subgraph}.mlir   one module per subgraph (`whole`, or `embed`, `layers_a_b`..., `head`), whose
                    functions share the subgraph's weights and KV cache (module globals):
                    prefill_T{P} per prompt bucket, decode, verify_T{g+1} per gamma
  model.irpa        all weights of the model (one archive for every subgraph and every target)
  tokenizer.json    copied from the checkpoint, when it has one
  export.json       the shape contract (contract.ExportRecord: functions, argument kinds, KV
                    parameters, dtype, context, weight shapes)
Files are rewritten only when their content changes, so the compile graph stays incremental.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import msgspec

from ..contract import (PARAM_SCOPE, ExportRecord, FunctionRecord, KVParam, ModelConfig, Parameters, Source,
                        SubgraphRecord, SubgraphSpec, TensorShape, TensorSpec, function_name, kv_param_name,
                        subgraph_specs)
from ..contract.config import default_max_context
from ..contract.export import ATTENTION
from ..contract.layout import cut
from ..errors import UserError
from ..fsutil import sha256_file, write_atomic

DEFAULT_GAMMAS = (1, 2, 3, 4, 5, 6, 7, 8)
DEFAULT_PREFILL = (16, 64)


def parse_int_list(text: str | None, what: str) -> list[int]:
    if text is None or text == "":
        return []
    try:
        vals = [int(x) for x in str(text).split(",") if x.strip() != ""]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from None
    return vals


def function_table(gammas: list[int], prefill: list[int]) -> dict[str, tuple[str, int, int | None]]:
    """Function name -> (role, T, gamma). verify_T{g+1} serves gamma g."""
    fns = {function_name("prefill", P): ("prefill", P, None) for P in sorted(set(prefill))}
    fns[function_name("decode", 1)] = ("decode", 1, None)
    for g in sorted(set(gammas)):
        fns[function_name("verify", g + 1)] = ("verify", g + 1, g)
    return fns


def check_export_options(cfg: ModelConfig, gammas, prefill, max_context):
    if max_context < 2:
        raise UserError(f"--max-context must be at least 2, got {max_context}")
    if not prefill:
        raise UserError("--prefill needs at least one bucket")
    for P in prefill:
        if P < 1 or P > max_context:
            raise UserError(f"--prefill bucket {P} is outside 1..--max-context ({max_context})")
    for g in gammas:
        if g < 1 or g + 1 > max_context:
            raise UserError(f"--gammas: gamma {g} needs {g + 1} cache slots; allowed 1..{max_context - 1}")
    if max_context > cfg.max_position_embeddings:
        print(f"warning: --max-context {max_context} exceeds the model's max_position_embeddings "
              f"({cfg.max_position_embeddings})", file=sys.stderr)


def _example_args(spec: SubgraphSpec, T: int, role: str, D: int, dtype):
    import torch
    pos = torch.tensor(0, dtype=torch.int32)
    length = torch.tensor(T, dtype=torch.int32)
    tok = torch.zeros(1, T, dtype=torch.int32)
    h = torch.zeros(1, T, D, dtype=dtype)
    if spec.kind == "embed":
        return (tok,)
    if spec.kind == "layers":
        return (h, pos)
    if spec.kind == "head":
        return (h, length) if role == "prefill" else (h,)
    return (tok, pos, length) if role == "prefill" else (tok, pos)


def abi_of(spec: SubgraphSpec, role: str, T: int, cfg: ModelConfig, dtype: str) -> tuple[list, list]:
    """(args, results) the runner relies on (letters as in contract/config.py)."""
    D, V = cfg.hidden_size, cfg.vocab_size
    h = TensorSpec("h", [1, T, D], dtype)
    Tout = 1 if role == "prefill" else T
    head_out = [TensorSpec("ids", [1, Tout], "i32"), TensorSpec("logits", [1, Tout, V], "f32")]
    tok = TensorSpec("tok", [1, T], "i32")
    pos = TensorSpec("pos", [], "i32")
    length = [TensorSpec("length", [], "i32")] if role == "prefill" else []
    if spec.kind == "embed":
        return [tok], [h]
    if spec.kind == "layers":
        return [h, pos], [h]
    if spec.kind == "head":
        return [h] + length, head_out
    return [tok, pos] + length, head_out


def externalize(full) -> None:
    """Mark every weight with its checkpoint name and every KV cache with its own parameter.

    Weights: named_parameters() lists a tied lm_head once, under model.embed_tokens.weight, so the
    archive stores it once. KV caches: each gets its own `kvcache.{layer}.{k|v}` parameter, given
    as a zero splat at run time; distinct names keep IREE from folding all caches into one
    resource (docs/FINDINGS.md, "KV cache as its own externalized parameter") and keep the zeros
    out of the vmfb and the .irpa.
    """
    from iree.turbine.aot import ExternalTensorTrait
    for name, p in full.named_parameters():
        ExternalTensorTrait(external_scope=PARAM_SCOPE, external_name=name).set(p)
    for i, layer in enumerate(full.model.layers):
        for kv in ("k", "v"):
            buf = getattr(layer.self_attn, f"{kv}_cache")
            ExternalTensorTrait(external_scope=PARAM_SCOPE, external_name=kv_param_name(i, kv)).set(buf)


def _dtype_name(dt) -> str:
    import torch
    return {torch.float32: "f32", torch.float16: "f16", torch.int8: "i8", torch.uint8: "u8"}[dt]


def save_irpa(full, path: Path) -> None:
    from iree.turbine.aot import ParameterArchiveBuilder
    builder = ParameterArchiveBuilder()
    for name, p in full.named_parameters():
        builder.add_tensor(name, p.detach())
    tmp = path.with_name(f".tmp.{path.name}")    # keeps the .irpa suffix the writer expects
    builder.save(tmp)
    if path.exists() and path.stat().st_size == tmp.stat().st_size and sha256_file(path) == sha256_file(tmp):
        tmp.unlink()
    else:
        tmp.replace(path)


def export_model(ckpt: str | Path, out: str | Path, split: list[int] | None = None,
                 gammas: list[int] | None = None, prefill: list[int] | None = None,
                 max_context: int | None = None, dtype: str = "f32", fuse: bool = True,
                 max_module_bytes: int | None = None, log=print, quant: str = "none",
                 smooth: float | None = None, jobs: int | None = None,
                 attention: str = "filled") -> ExportRecord:
    """Export `ckpt` into `out` (skipped when the same checkpoint, options and exporter made it).

    max_module_bytes: cut the model into layer ranges whose weights and KV caches each stay
    within it, adding cuts to `split` (contract/layout.py); None: the smallest GPU allocation
    limit of the known platforms, with a margin (plan/platforms.py); 0: no limit.
    smooth: SmoothQuant's alpha for a w8a8 export (builder/model/smooth.py); None: its default
    (0.5) for w8a8, nothing else; 0: no smoothing.
    jobs: processes that trace the functions at once (export_parts.py); None: as many as the cores,
    the amount of tracing and the free memory allow; 1: this process only.
    attention: "filled" (default): each call attends to the cache slots 0..pos+T-1, a dynamic length,
    so a call costs what the context holds so far; "all": every one of the max_context slots, masked
    (static shapes everywhere: the escape hatch for a driver that mishandles the dynamic length)."""
    from .checkpoint import checkpoint_files

    # torch.export's pytree deprecation notices (torch 2.13) say nothing about the user's model
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.is_dir():
        raise UserError(f"checkpoint folder not found: {ckpt}")
    if dtype not in ("f32", "f16"):
        raise UserError(f"--dtype must be f32 or f16, got {dtype!r}")
    if attention not in ATTENTION:
        raise UserError(f"--attention must be {' or '.join(ATTENTION)}, got {attention!r}")
    gammas = list(DEFAULT_GAMMAS) if gammas is None else sorted(set(gammas))
    prefill = list(DEFAULT_PREFILL) if prefill is None else sorted(set(prefill))
    cfg = ModelConfig.from_hf(ckpt)
    if max_context is None:
        max_context = default_max_context(ckpt)
    check_export_options(cfg, gammas, prefill, max_context)
    split = _split_to_fit(cfg, dtype, max_context, max_module_bytes, split, log)
    specs = subgraph_specs(cfg.num_layers, split)
    tok_src = ckpt / "tokenizer.json"
    extras = [ckpt / f for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json")]
    source_files = [ckpt / "config.json"] + checkpoint_files(ckpt) + [f for f in extras if f.exists()]
    source = Source(str(ckpt.resolve()), {p.name: sha256_file(p) for p in source_files})
    # Same checkpoint, options and exporter code -> the folder is already right: skip torch.
    from .model.quant import QUANTS, check_quant_shapes
    if quant not in QUANTS:
        raise UserError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    check_quant_shapes(cfg, quant)
    smooth = _smooth_alpha(quant, smooth)
    fingerprint = _fingerprint(source.sha256, [s.label for s in specs], gammas, prefill, max_context, dtype, fuse,
                               quant, smooth, attention)
    prev = _previous_export(out)
    if prev is not None and prev.fingerprint == fingerprint and all(
            (out / f).exists() for f in [sg.mlir for sg in prev.subgraphs] + ["model.irpa"]
            + ([prev.smooth_scales] if prev.smooth_scales else [])):
        log(f"{out}: up to date (same checkpoint, options and exporter)")
        return prev

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    scales = None
    if smooth:
        from .model.smooth import SCALES_FILE, compute_scales, save_scales
        t = time.perf_counter()
        scales = compute_scales(ckpt, cfg, smooth, tok_src if tok_src.exists() else None)
        save_scales(scales, out / SCALES_FILE)
        log(f"SmoothQuant alpha {smooth}: activation ranges of the calibration text in "
            f"{time.perf_counter() - t:.1f}s" + ("" if tok_src.exists() else " (no tokenizer.json: random ids)"))
    fns = function_table(gammas, prefill)
    from .export_parts import PartsExport, export_jobs
    n_jobs = export_jobs(cfg, dtype, len(fns), jobs)
    # the children start before the parent loads the model: their start overlaps its load
    parts = PartsExport(n_jobs, fns, specs, out, dict(
        ckpt=str(ckpt), dtype=dtype, max_context=max_context, fuse=fuse, quant=quant, attention=attention,
        scales_file=str(out / SCALES_FILE) if smooth else None), log) if n_jobs > 1 else None
    try:
        full = _load(ckpt, dtype, max_context, cfg, fuse, log, quant, scales, attention)
        merged = parts.finish(full, cfg, dtype) if parts else None
    finally:
        if parts:
            parts.close()
    subgraphs = [_export_subgraph(full, spec, fns, cfg, dtype, max_context, out, log,
                                  parts=(lambda sp: merged[sp.name]) if merged else None) for spec in specs]
    save_irpa(full, out / "model.irpa")
    tokenizer = tokenizer_config = None
    if tok_src.exists():
        write_atomic(out / "tokenizer.json", tok_src.read_bytes())
        tokenizer = "tokenizer.json"
    if (ckpt / "tokenizer_config.json").exists():
        write_atomic(out / "tokenizer_config.json", (ckpt / "tokenizer_config.json").read_bytes())
        tokenizer_config = "tokenizer_config.json"
    record = ExportRecord(
        name=out.name, source=source, fingerprint=fingerprint, config=cfg, dtype=dtype, quant=quant,
        smooth=smooth, smooth_scales=SCALES_FILE if smooth else None, max_context=max_context, attention=attention,
        fused_projections=fuse, gammas=gammas, prefill=prefill, subgraphs=subgraphs,
        parameters=Parameters(file="model.irpa", scope=PARAM_SCOPE, sha256=sha256_file(out / "model.irpa"),
                              tensors={n: TensorShape(list(t.shape), _dtype_name(t.dtype))
                                       for n, t in full.named_parameters()}),
        tokenizer=tokenizer, tokenizer_config=tokenizer_config, versions=_versions())
    record.write(out / "export.json")
    log(f"wrote {out}/ ({len(specs)} modules, model.irpa "
        f"{(out / 'model.irpa').stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f}s")
    return record


def _split_to_fit(cfg: ModelConfig, dtype: str, max_context: int, max_bytes: int | None,
                  split: list[int] | None, log) -> list[int] | None:
    """The user's split points plus the cuts that keep every module within max_bytes."""
    if max_bytes is None:
        from ..plan.platforms import default_max_module_bytes
        max_bytes = default_max_module_bytes()
    if max_bytes < 0:
        raise UserError(f"--max-module-bytes must be >= 0 (0: no limit), got {max_bytes}")
    fitted = cut(cfg, dtype, max_context, max_bytes, split)
    if fitted and sorted(set(fitted)) != sorted({0} | set(split or [])):
        log(f"cut at layers {','.join(map(str, fitted))} so that every module's weights and KV caches "
            f"stay within {max_bytes} bytes (--max-module-bytes; 0 = no limit)")
    return fitted


def _smooth_alpha(quant: str, smooth: float | None) -> float:
    """The SmoothQuant alpha to export with: w8a8 only (see builder/model/smooth.py)."""
    from .model.smooth import DEFAULT_ALPHA
    if smooth is None:
        return DEFAULT_ALPHA if quant == "w8a8" else 0.0
    if not 0.0 <= smooth <= 1.0:
        raise UserError(f"--smooth must be in [0, 1] (0: no smoothing), got {smooth}")
    if smooth and quant != "w8a8":
        raise UserError(f"--smooth applies to --quant w8a8 only (it would cost w4a8's 4-bit weights more than it "
                        f"saves; got --quant {quant})")
    return float(smooth)


def _load(ckpt: Path, dtype: str, max_context: int, cfg: ModelConfig, fuse: bool, log, quant: str = "none",
          scales=None, attention: str = "filled"):
    """The torch model with its weights and KV caches marked as external parameters; `scales`:
    SmoothQuant's, folded in before the projections are quantized."""
    from .model.loader import load_checkpoint
    t0 = time.perf_counter()
    full = load_checkpoint(ckpt, dtype, max_context, cfg, zero_caches=False, attention=attention)
    log(f"loaded {ckpt} ({cfg.model_type}, {cfg.num_parameters() / 1e6:.1f}M parameters, "
        f"{cfg.num_layers} layers) in {time.perf_counter() - t0:.1f}s")
    if fuse:
        # q/k/v and gate/up stacked: 7 -> 4 matmuls per layer, each a chain of dispatches
        full.fuse_projections()
    if quant != "none":
        from .model.smooth import quantize_with
        quantize_with(full, quant, scales)
    externalize(full)
    return full


def export_mlir(full, spec: SubgraphSpec, fns: dict, cfg: ModelConfig, dtype: str, path: Path) -> None:
    """Trace `fns` (name -> (role, T, gamma)) of one subgraph of `full` and write their module to `path`.
    Each function is one torch.export trace plus a decomposition retrace of the whole subgraph:
    ~0.4 s per decoder layer per function on one core here, the bulk of an export."""
    import iree.turbine.aot as aot

    from .model.llama import Subgraph
    from .model.loader import DTYPES
    module = Subgraph(full, spec.kind, spec.start, spec.end)
    fxb = aot.FxProgramsBuilder(module)
    for fname, (role, T, _) in fns.items():
        args = _example_args(spec, T, role, cfg.hidden_size, DTYPES[dtype])

        def entry(module, *a):
            return module(*a)
        fxb.export_program(name=fname, args=args, strict=False)(entry)
    aot.export(fxb, module_name=spec.name).save_mlir(path)


def _export_subgraph(full, spec: SubgraphSpec, fns: dict, cfg: ModelConfig, dtype: str, max_context: int,
                     out: Path, log, parts=None) -> SubgraphRecord:
    """One module: every function of the table, sharing the subgraph's weights and caches.
    parts: spec -> the module's text, merged from a parallel export (export_parts.py); None: trace here."""
    import torch

    from .model.llama import Subgraph
    from .model.loader import DTYPES
    t = time.perf_counter()
    module = Subgraph(full, spec.kind, spec.start, spec.end)
    if parts is None:
        tmp = out / f".{spec.name}.mlir.export"
        export_mlir(full, spec, fns, cfg, dtype, tmp)
        text = tmp.read_bytes()
        tmp.unlink()
    else:
        text = parts(spec)
    changed = write_atomic(out / f"{spec.name}.mlir", text)
    S, KVH, Dh = max_context, cfg.num_kv_heads, cfg.head_dim
    elt = torch.tensor([], dtype=DTYPES[dtype]).element_size()
    functions = {}
    for fname, (role, T, g) in fns.items():
        args, results = abi_of(spec, role, T, cfg, dtype)
        functions[fname] = FunctionRecord(T=T, role=role, gamma=msgspec.UNSET if g is None else g,
                                          args=args, results=results)
    log(f"exported {spec.label:>14} ({len(fns)} functions) "
        + (f"in {time.perf_counter() - t:.1f}s" if parts is None else "from the parallel trace")
        + ("" if changed else " (unchanged)"))
    return SubgraphRecord(
        name=spec.name, kind=spec.kind, label=spec.label, start=spec.start, end=spec.end,
        mlir=f"{spec.name}.mlir", sha256=sha256_file(out / f"{spec.name}.mlir"), functions=functions,
        # one device allocation holds these (docs/FINDINGS.md): what must fit a device's limit
        parameter_bytes=sum(p.numel() * p.element_size() for p in module.parameters()),
        kv_params=[KVParam(kv_param_name(i, kv), [S, KVH, Dh], S * KVH * Dh * elt)
                   for i in range(spec.start, spec.end) for kv in ("k", "v")])


def _fingerprint(source_sha: dict, labels, gammas, prefill, max_context, dtype, fuse=True, quant="none",
                 smooth=0.0, attention="filled") -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    code = sorted(here.joinpath("model").glob("*.py")) + [Path(__file__)]
    for f in code:
        h.update(f.read_bytes())
    h.update(json.dumps([source_sha, labels, gammas, prefill, max_context, dtype, fuse, _versions()]
                        + ([quant] if quant != "none" else []) + ([smooth] if smooth else []) + [attention],
                        sort_keys=True).encode())
    return h.hexdigest()


def _previous_export(out: Path) -> ExportRecord | None:
    """The export.json already in `out`, if it is one this build_sd reads (else: export anew)."""
    try:
        return ExportRecord.read(out / "export.json")
    except UserError:
        return None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    v = {}
    for pkg in ("torch", "iree-turbine", "iree-base-compiler"):
        try:
            v[pkg] = version(pkg)
        except PackageNotFoundError:
            v[pkg] = None
    return v


def load_export(path: str | Path) -> ExportRecord:
    return ExportRecord.read(Path(path) / "export.json", "run `build-sd export` first")
