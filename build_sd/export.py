"""`build-sd export`: cut a checkpoint into subgraphs and export each with iree-turbine -> mlir/NAME.

Output folder:
  {subgraph}.mlir   one module per subgraph (`whole`, or `embed`, `layers_a_b`..., `head`), whose
                    functions share the subgraph's weights and KV cache (module globals):
                    prefill_T{P} per prompt bucket, decode, verify_T{g+1} per gamma
  model.irpa        all weights of the model (one archive for every subgraph and every target)
  tokenizer.json    copied from the checkpoint, when it has one
  export.json       the shape contract (functions, argument kinds, KV parameters, dtype, context)
Files are rewritten only when their content changes, so the compile graph stays incremental.
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig
from .errors import UserError
from .fsutil import sha256_file, write_atomic, write_json

EXPORT_SCHEMA = 1
PARAM_SCOPE = "model"
DEFAULT_GAMMAS = (1, 2, 3, 4, 5, 6, 7, 8)
DEFAULT_PREFILL = (16, 64)


@dataclass(frozen=True)
class SubgraphSpec:
    kind: str          # embed | layers | head | whole
    start: int = 0
    end: int = 0

    @property
    def name(self) -> str:
        return f"layers_{self.start}_{self.end}" if self.kind == "layers" else self.kind

    @property
    def label(self) -> str:
        """The name users write in placements: embed, layers[0:4], head, whole."""
        return f"layers[{self.start}:{self.end}]" if self.kind == "layers" else self.kind


def parse_int_list(text: str | None, what: str) -> list[int]:
    if text is None or text == "":
        return []
    try:
        vals = [int(x) for x in str(text).split(",") if x.strip() != ""]
    except ValueError:
        raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from None
    return vals


def plan_subgraphs(num_layers: int, split: list[int] | None) -> list[SubgraphSpec]:
    """`--split 0,4,8` on 12 layers -> embed, layers[0:4], [4:8], [8:12], head; none -> whole."""
    if not split:
        return [SubgraphSpec("whole", 0, num_layers)]
    starts = sorted(set(split))
    if starts[0] < 0 or starts[-1] >= num_layers:
        raise UserError(f"--split: layer starts must be in 0..{num_layers - 1}, got {split}")
    if starts[0] != 0:
        starts = [0] + starts
    ends = starts[1:] + [num_layers]
    return ([SubgraphSpec("embed")] + [SubgraphSpec("layers", a, b) for a, b in zip(starts, ends)]
            + [SubgraphSpec("head")])


def function_table(gammas: list[int], prefill: list[int]) -> dict[str, dict]:
    """Function name -> {T, role}. verify_T{g+1} serves gamma g."""
    fns = {f"prefill_T{P}": {"T": P, "role": "prefill"} for P in sorted(set(prefill))}
    fns["decode"] = {"T": 1, "role": "decode"}
    for g in sorted(set(gammas)):
        fns[f"verify_T{g + 1}"] = {"T": g + 1, "role": "verify", "gamma": g}
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


def _example_args(kind: str, T: int, role: str, D: int, dtype):
    import torch
    pos = torch.tensor(0, dtype=torch.int32)
    length = torch.tensor(T, dtype=torch.int32)
    tok = torch.zeros(1, T, dtype=torch.int32)
    h = torch.zeros(1, T, D, dtype=dtype)
    if kind == "embed":
        return (tok,)
    if kind == "layers":
        return (h, pos)
    if kind == "head":
        return (h, length) if role == "prefill" else (h,)
    return (tok, pos, length) if role == "prefill" else (tok, pos)


def abi_of(kind: str, role: str, T: int, cfg: ModelConfig, dtype: str) -> dict:
    """The argument/result contract the runner relies on (letters as in config.py)."""
    D, V = cfg.hidden_size, cfg.vocab_size
    hid = {"shape": [1, T, D], "dtype": dtype}
    Tout = 1 if role == "prefill" else T
    head_out = [{"name": "ids", "shape": [1, Tout], "dtype": "i32"},
                {"name": "logits", "shape": [1, Tout, V], "dtype": "f32"}]
    tok = {"name": "tok", "shape": [1, T], "dtype": "i32"}
    pos = {"name": "pos", "shape": [], "dtype": "i32"}
    length = {"name": "length", "shape": [], "dtype": "i32"}
    if kind == "embed":
        return {"args": [tok], "results": [dict(name="h", **hid)]}
    if kind == "layers":
        return {"args": [dict(name="h", **hid), pos], "results": [dict(name="h", **hid)]}
    if kind == "head":
        args = [dict(name="h", **hid)] + ([length] if role == "prefill" else [])
        return {"args": args, "results": head_out}
    return {"args": [tok, pos] + ([length] if role == "prefill" else []), "results": head_out}


def externalize(full) -> None:
    """Mark every weight with its checkpoint name and every KV cache with its own parameter.

    Weights: named_parameters() lists a tied lm_head once, under model.embed_tokens.weight, so the
    archive stores it once. KV caches: each gets its own `kvcache.{layer}.{k|v}` parameter, given
    as a zero splat at run time; distinct names keep IREE from folding all caches into one
    resource (probes/FINDINGS.md B) and keep the zeros out of the vmfb and the .irpa.
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
    return {torch.float32: "f32", torch.float16: "f16"}[dt]


def kv_param_name(layer: int, kv: str) -> str:
    return f"kvcache.{layer}.{kv}"


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
                 max_context: int = 512, dtype: str = "f32", fuse: bool = True, log=print) -> dict:
    from .checkpoint import checkpoint_files

    # torch.export's pytree deprecation notices (torch 2.13) say nothing about the user's model
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
    ckpt, out = Path(ckpt), Path(out)
    if not ckpt.is_dir():
        raise UserError(f"checkpoint folder not found: {ckpt}")
    if dtype not in ("f32", "f16"):
        raise UserError(f"--dtype must be f32 or f16, got {dtype!r}")
    gammas = list(DEFAULT_GAMMAS) if gammas is None else sorted(set(gammas))
    prefill = list(DEFAULT_PREFILL) if prefill is None else sorted(set(prefill))
    cfg = ModelConfig.from_hf(ckpt)
    check_export_options(cfg, gammas, prefill, max_context)
    specs = plan_subgraphs(cfg.num_layers, split)
    tok_src = ckpt / "tokenizer.json"
    source_files = [ckpt / "config.json"] + checkpoint_files(ckpt) + ([tok_src] if tok_src.exists() else [])
    source_sha = {p.name: sha256_file(p) for p in source_files}
    # Same checkpoint, options and exporter code -> the folder is already right: skip torch.
    fingerprint = _fingerprint(source_sha, [s.label for s in specs], gammas, prefill, max_context, dtype, fuse)
    prev = _previous_export(out)
    if prev.get("fingerprint") == fingerprint and all(
            (out / f).exists() for f in [sg["mlir"] for sg in prev["subgraphs"]] + ["model.irpa"]):
        log(f"{out}: up to date (same checkpoint, options and exporter)")
        return prev

    import torch
    import iree.turbine.aot as aot

    from .model.llama import Subgraph
    from .model.loader import DTYPES, load_checkpoint

    t0 = time.perf_counter()
    full = load_checkpoint(ckpt, dtype, max_context, cfg)
    log(f"loaded {ckpt} ({cfg.model_type}, {cfg.num_parameters() / 1e6:.1f}M parameters, "
        f"{cfg.num_layers} layers) in {time.perf_counter() - t0:.1f}s")
    if fuse:
        # q/k/v and gate/up stacked: 7 -> 4 matmuls per layer, each a chain of dispatches
        full.fuse_projections()
    externalize(full)
    fns = function_table(gammas, prefill)
    out.mkdir(parents=True, exist_ok=True)
    torch_dtype = DTYPES[dtype]
    subgraphs = []
    for spec in specs:
        t = time.perf_counter()
        sg = Subgraph(full, spec.kind, spec.start, spec.end)
        fxb = aot.FxProgramsBuilder(sg)
        for fname, f in fns.items():
            args = _example_args(spec.kind, f["T"], f["role"], cfg.hidden_size, torch_dtype)

            def entry(module, *a):
                return module(*a)
            fxb.export_program(name=fname, args=args, strict=False)(entry)
        tmp = out / f".{spec.name}.mlir.export"
        aot.export(fxb, module_name=spec.name).save_mlir(tmp)
        changed = write_atomic(out / f"{spec.name}.mlir", tmp.read_bytes())
        tmp.unlink()
        layers = range(spec.start, spec.end)
        S, KVH, Dh = max_context, cfg.num_kv_heads, cfg.head_dim
        elt = torch.tensor([], dtype=torch_dtype).element_size()
        subgraphs.append({
            "name": spec.name, "kind": spec.kind, "label": spec.label,
            "start": spec.start, "end": spec.end,
            "mlir": f"{spec.name}.mlir", "sha256": sha256_file(out / f"{spec.name}.mlir"),
            "functions": {n: dict(f, **abi_of(spec.kind, f["role"], f["T"], cfg, dtype)) for n, f in fns.items()},
            "kv_params": [{"name": kv_param_name(i, kv), "shape": [S, KVH, Dh], "bytes": S * KVH * Dh * elt}
                          for i in layers for kv in ("k", "v")],
        })
        log(f"exported {spec.label:>14} ({len(fns)} functions) in {time.perf_counter() - t:.1f}s"
            + ("" if changed else " (unchanged)"))
    save_irpa(full, out / "model.irpa")
    tokenizer = None
    if tok_src.exists():
        write_atomic(out / "tokenizer.json", tok_src.read_bytes())
        tokenizer = "tokenizer.json"
    meta = {
        "schema": EXPORT_SCHEMA,
        "kind": "build_sd.export",
        "name": out.name,
        "source": {"path": str(ckpt.resolve()),
                   "sha256": source_sha},
        "fingerprint": fingerprint,
        "config": cfg.to_dict(),
        "dtype": dtype,
        "max_context": max_context,
        "fused_projections": fuse,
        "gammas": gammas,
        "prefill": prefill,
        "subgraphs": subgraphs,
        "parameters": {"file": "model.irpa", "scope": PARAM_SCOPE,
                       "sha256": sha256_file(out / "model.irpa"),
                       # names and shapes of what the .irpa holds: the runtime's --random-weights
                       # draws these instead of reading the archive (latency studies)
                       "tensors": {n: {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
                                   for n, t in full.named_parameters()}},
        "tokenizer": tokenizer,
        "versions": _versions(),
    }
    write_json(out / "export.json", meta)
    log(f"wrote {out}/ ({len(specs)} modules, model.irpa "
        f"{(out / 'model.irpa').stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f}s")
    return meta


def _fingerprint(source_sha: dict, labels, gammas, prefill, max_context, dtype, fuse=True) -> str:
    import hashlib
    h = hashlib.sha256()
    code = sorted(Path(__file__).parent.joinpath("model").glob("*.py")) + [Path(__file__)]
    for f in code:
        h.update(f.read_bytes())
    h.update(json.dumps([source_sha, labels, gammas, prefill, max_context, dtype, fuse, _versions()],
                        sort_keys=True).encode())
    return h.hexdigest()


def _previous_export(out: Path) -> dict:
    try:
        return json.loads((out / "export.json").read_text())
    except (OSError, ValueError):
        return {}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    v = {}
    for pkg in ("torch", "iree-turbine", "iree-base-compiler"):
        try:
            v[pkg] = version(pkg)
        except PackageNotFoundError:
            v[pkg] = None
    return v


def load_export(path: str | Path) -> dict:
    from .fsutil import read_json
    meta = read_json(Path(path) / "export.json", "export.json (run `build-sd export` first)")
    if meta.get("kind") != "build_sd.export":
        raise UserError(f"{path}/export.json is not a build_sd export")
    if meta.get("schema", 0) > EXPORT_SCHEMA:
        raise UserError(f"{path}/export.json has schema {meta.get('schema')}, newer than this "
                        f"build_sd understands ({EXPORT_SCHEMA})")
    return meta
