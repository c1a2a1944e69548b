"""`build-sd validate`: every module this machine can run, against the PyTorch model.

For each preset whose modules can run here, the subgraphs are chained on the IREE runtime
(embed -> layers... -> head) and driven through a script of calls at moving positions
(prefill -> decode -> every verify -> decode, with rollbacks as after rejected drafts, for each
prompt bucket), next to the same calls on the torch model with the same split. Each module's
output (hidden state or logits) is compared at every step.

Tolerances:
- f32: max |diff| <= 1e-4 * max(1, max |ref|) (the logits' or hidden state's magnitude).
- f16 modules against the f32 reference: <= 2e-2 * max(1, max |ref|). Why: f16 keeps 11
  significant bits (unit roundoff 4.9e-4); every layer rounds its inputs, weights and
  outputs, and the residual stream adds the errors of L layers, so per-element errors of a few
  times 1e-3 relative to the largest value are expected; 2e-2 leaves room for that while still
  catching real bugs (a wrong RoPE, mask or cache slot gives errors of order 1).
- quantized exports (w8a8, w4a8) against the same quantized arithmetic in torch: 2e-2 (5e-2
  smoothed) of the magnitude, and at least 3x how far the reference's own rounding carries it
  (a jittered twin of the reference, see TOL_SCALE_QUANT and Twin below: on a 30-layer model ~10 %).
- argmax: must agree with the reference, except where the reference's top two logits are
  closer than the tolerance (a near tie, reported as such, never silently).
- Arm modules (a55, a76) run under qemu-aarch64 when `make emulation` set it up (emulate.py):
  each function once at position 0, with the same tolerances.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import function_name
from ..contract.golden import VALUES
from ..errors import UserError
from ..runtime.numerics import absmax, digest_values, row_diff
from .compile import load_artifacts

TOL_SCALE = {"f32": 1e-4, "f16": 2e-2}
# W8A8 against the same arithmetic in torch: equal to ~1e-6 except where an activation lands on the
# other side of a rounding step in one and not the other (f32 sums in another order): that moves one
# int8 code, up to 1/127 of its row's range times the next weight row's, which the later layers carry.
# The tests' tiny model: <= 2e-6 everywhere on the CPU; on lavapipe one flip in a verify call gave
# 3.4e-2 on logits of ~5 (7e-3 relative) with f32 logits, 5.3e-2 (1.0e-2) with the head in int8 too.
# So: 2e-2 of the magnitude (two codes' worth); argmax agreement is checked as for every dtype
TOL_SCALE_QUANT = {"w8a8": 2e-2, "w4a8": 2e-2}
# SmoothQuant (export's default for w8a8) makes flips both likelier and larger: the activations are
# flatter, so more of them sit on large codes where f32's ordering error reaches a rounding step, and an
# outlier channel's scale now lives in its weight column, which a flipped code multiplies. The tiny
# model on lavapipe: 2 of 4 functions flipped (none unsmoothed), 1.25e-1 on logits of ~5 (2.5e-2).
# So 5e-2 (two such flips); a compiler error (a wrong scale, a transposed operand) is O(1), and the
# median function must still equal the reference to f32 rounding (tests/test_quant.py)
TOL_SCALE_SMOOTHED = 5e-2
# ...and a deep model multiplies those flips: each flipped code moves the next layers' inputs, whose
# own codes then flip, and the KV caches carry them into every later call. SmolLM2-135M (30 layers,
# w8a8): the compiled module differs from the torch reference by up to 1.1-3.5 on logits of ~31, and
# so does the reference from a twin of itself whose quantized layers see their inputs moved by ~8 f32
# ulps (1e-6 relative, the size of the float parts' own differences between IREE's kernels and
# torch's): the quantized arithmetic of a deep model is defined only to within its own rounding's
# reach. So for quantized exports each call's tolerance is at least JITTER_MARGIN x that reach,
# measured on the same call by a jittered twin of the reference that follows the same script (its own
# caches, its own history). A small model keeps the tight tolerance above (its reach is ~1e-6); a
# compiler error (a wrong scale, layout or cache slot) is still of the magnitude of the values.
JITTER = 1e-6
JITTER_MARGIN = 3.0


class Twin:
    """A copy of the quantized reference whose quantized layers get their inputs times
    (1 + JITTER * N(0,1)), seeded once: run beside the reference on the same calls, the distance
    between the two is how far the reference's own rounding carries its outputs (TOL note above)."""

    def __init__(self, model, subgraphs, seed: int = 0):
        import copy

        import torch

        from .model.llama import Subgraph
        from .model.quant import W8A8Linear          # W4A8Linear derives from it
        self.model = copy.deepcopy(model)
        self.subs = [Subgraph(self.model, sg.kind, sg.start, sg.end) for sg in subgraphs]
        self.gen = torch.Generator().manual_seed(seed)
        for m in self.model.modules():
            if isinstance(m, W8A8Linear):
                m.register_forward_pre_hook(self._hook)

    def _hook(self, mod, args):
        import torch
        x = args[0]
        return (x * (1 + JITTER * torch.randn(x.shape, generator=self.gen, dtype=x.dtype)),) + tuple(args[1:])

    def reset_cache(self) -> None:
        self.model.reset_cache()

    def reach(self, refs: list[np.ndarray], tok, pos: int, length: int | None) -> list[float]:
        """JITTER_MARGIN x the twin's distance to the reference's outputs `refs` of the same call."""
        twin = _run_reference(self.subs, tok, pos, length)
        return [JITTER_MARGIN * row_diff(t, r) for t, r in zip(twin, refs)]


def tol_scale(export) -> float:
    if export.quant == "none":
        return TOL_SCALE[export.dtype]
    return TOL_SCALE_SMOOTHED if export.smooth else TOL_SCALE_QUANT[export.quant]


@dataclass
class Row:
    module: str
    function: str
    device: str
    max_diff: float = 0.0
    tol: float = 0.0
    argmax_agree: int = 0
    argmax_total: int = 0
    ties: int = 0
    ok: bool = True
    steps: int = 0

    def add(self, diff, tol):
        self.max_diff = max(self.max_diff, diff)
        self.tol = max(self.tol, tol)
        self.steps += 1
        if diff > tol:
            self.ok = False


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (preset, reason)
    notes: list[str] = field(default_factory=list)                  # emulated presets' summaries

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)


def script(buckets: list[int], verify_T: list[int], S: int, seed: int = 0):
    """(role, T, pos, n) calls for one prompt bucket at a time; rollbacks move pos back."""
    rng = np.random.default_rng(seed)
    for P in buckets:
        n = max(1, P - 2) if P > 2 else P
        calls = [("prefill", P, 0, n)]
        pos = n
        calls.append(("decode", 1, pos, 1))
        pos += 1
        for T in verify_T + [1] + verify_T[::-1]:
            if pos + T > S:
                break
            calls.append(("verify" if T > 1 else "decode", T, pos, T))
            pos += int(rng.integers(1, T + 1))      # accept 0..T-1 drafts + 1: the rest is stale
        yield P, calls


def validate(artifacts: str | Path, ckpt: str | Path, presets: list[str] | None = None,
             verbose: bool = False, out=print, emulate: bool = True) -> bool:
    """Every module of `artifacts` this machine can run, against the checkpoint's torch model.

    emulate: run the aarch64 presets' modules under qemu-user when it is set up (emulate.py)."""
    from . import emulate as emu_mod
    from ..runtime.compat import can_run
    from ..runtime.devices import DevicePool
    from .model.llama import Subgraph
    from .model.loader import load_checkpoint

    artifacts = Path(artifacts)
    man, export = load_artifacts(artifacts)
    known = list(man.presets)
    for p in presets or []:
        if p not in known:
            raise UserError(f"preset {p!r} is not in {artifacts} (it holds: {', '.join(known)})")
    # f16 modules are judged against the f32 model (what the checkpoint means), see docstring;
    # W8A8 modules against the same quantized arithmetic in f32 torch: that checks the compiler, and
    # the quantization's own error is measured apart (agreement, alpha: `calibrate`)
    ref_model = load_checkpoint(ckpt, "f32", export.max_context)
    if export.quant != "none":
        # the export's SmoothQuant scales (if any) folded into the f32 reference as into its weights
        from .model.smooth import load_scales, quantize_with
        quantize_with(ref_model, export.quant,
                      load_scales(artifacts / export.smooth_scales) if export.smooth_scales else None)
    ref_subs = [Subgraph(ref_model, sg.kind, sg.start, sg.end) for sg in export.subgraphs]
    twin = Twin(ref_model, export.subgraphs) if export.quant != "none" else None
    report = Report()
    pool = DevicePool()
    for preset in presets or known:
        rec = man.presets[preset]
        ok, why = can_run(rec)
        if not ok:
            emu, no_emu = (emu_mod.find(rec.arch, rec.flags) if emulate and rec.backend == "llvm-cpu"
                           else (None, ""))
            if emu is None:
                report.skipped.append((preset, why + (f"; not emulated: {no_emu}" if rec.arch == "aarch64"
                                                      and no_emu else "")))
                continue
            native = next((p for p in known if man.presets[p].backend == "llvm-cpu" and can_run(man.presets[p])[0]),
                          None)
            rows, note = _validate_emulated(artifacts, export, preset, emu, ref_model, ref_subs, native, twin)
            report.rows.extend(rows)
            report.notes.append(note)
            continue
        report.rows.extend(_validate_preset(artifacts, export, man.presets[preset].driver, preset, pool,
                                            ref_model, ref_subs, verbose, out, twin))
    _print_report(report, out)
    # the reference's numbers travel with the model: `verify --numerics` checks the board's modules,
    # the compile-checked ones (Mali, Arm) included
    golden_case(export, ref_model, ref_subs, ckpt, twin=twin).write(artifacts / "golden.json")
    return report.ok and bool(report.rows)


def golden_case(export, ref_model, ref_subs, ckpt, prompt_len: int = 8, decode_steps: int = 4,
                twin: Twin | None = None):
    """A prompt and a few greedy decode steps of the f32 reference: per step the greedy id, its
    top-2 gap, and a digest of every module's output row (contract/golden.py). With `twin` (a
    quantized export), the tolerance covers JITTER_MARGIN x the reference's own rounding reach."""
    import torch

    from ..contract import GoldenCase, GoldenStep, ModuleDigest
    V, S = ref_model.cfg.vocab_size, export.max_context
    n = min(prompt_len, max(export.prefill), S - decode_steps - 1)
    prompt = [int(t) for t in np.random.default_rng(7).integers(1, V, size=n)]
    P = next(b for b in sorted(export.prefill) if b >= n)
    labels = [sg.label for sg in export.subgraphs]
    ref_model.reset_cache()
    if twin:
        twin.reset_cache()
    steps, pos, toks = [], 0, prompt
    scale = tol_scale(export)
    for k in range(decode_steps + 1):
        prefill = k == 0
        padded = toks + [0] * (P - n) if prefill else toks
        args = (torch.tensor([padded], dtype=torch.int32), pos, n if prefill else None)
        outs = _run_reference(ref_subs, *args)
        for o, reach in zip(outs, twin.reach(outs, *args) if twin else []):
            scale = max(scale, reach / max(1.0, absmax(o)))
        rows = [o.reshape(-1, o.shape[-1])[(n - 1) if prefill and i < len(outs) - 1 else -1]
                for i, o in enumerate(outs)]
        logits = rows[-1]
        top2 = np.sort(logits)[-2:]
        greedy = int(np.argmax(logits))
        steps.append(GoldenStep(role="prefill" if prefill else "decode", pos=pos, tokens=list(toks), greedy=greedy,
                                gap=float(top2[1] - top2[0]),
                                modules=[ModuleDigest(label=lab, absmax=absmax(r), values=digest_values(r, VALUES))
                                         for lab, r in zip(labels, rows)]))
        pos += len(toks)
        toks = [greedy]
    sha = export.source.config_sha256 or "?"
    return GoldenCase(reference=f"PyTorch f32 of {Path(ckpt).name} (config.json sha256 {sha[:16]})",
                      tol_scale=scale, steps=steps)


def _validate_preset(artifacts: Path, export, driver: str, preset: str, pool, ref_model, ref_subs,
                     verbose: bool, out, twin: Twin | None = None) -> list[Row]:
    """The call script on one preset's chain beside the torch model: a Row per module function."""
    import torch

    from ..runtime.chain import ModelChain, PlacedSubgraph
    from ..runtime.devices import retry_if_lost
    S, V = export.max_context, ref_model.cfg.vocab_size
    scale = tol_scale(export)
    labels = [sg.label for sg in export.subgraphs]
    placed = [PlacedSubgraph(sg, artifacts / preset / f"{sg.name}.vmfb", driver, preset) for sg in export.subgraphs]
    chain = retry_if_lost(lambda: ModelChain(pool, export, artifacts / "model.irpa", placed), preset)
    dev_name = pool.get(driver).name
    rng = np.random.default_rng(1)
    rows: dict[tuple[str, str], Row] = {}
    ref_model.reset_cache()
    if twin:
        twin.reset_cache()
    for P, calls in script(export.prefill, export.verify_T, S):
        seq = rng.integers(0, V, size=S, dtype=np.int64).astype(np.int32)
        for role, T, pos, n in calls:
            toks = seq[pos:pos + n]
            if role == "prefill":
                got = chain.prefill(toks, pos, trace=True)
                fname = function_name("prefill", P)
                padded = np.zeros(P, np.int32)
                padded[:n] = toks
                ref_in = torch.from_numpy(padded)[None]
            else:
                got = chain.step(toks, pos, trace=True)
                fname = chain.function_for(role, T)
                ref_in = torch.from_numpy(toks)[None]
            length = n if role == "prefill" else None
            refs = _run_reference(ref_subs, ref_in, pos, length)
            reach = twin.reach(refs, ref_in, pos, length) if twin else [0.0] * len(refs)
            got_logits = got.logits()
            outs = [h for _, h in got.hidden] + [got_logits]
            for k, (label, g, r) in enumerate(zip(labels, outs, refs)):
                r = r.reshape(g.shape).astype(np.float32)
                diff = row_diff(g, r)
                tol = max(scale * max(1.0, absmax(r)), reach[k])
                rows.setdefault((label, fname), Row(label, fname, dev_name)).add(diff, tol)
            head = rows[(labels[-1], fname)]
            _check_argmax(head, got.ids, refs[-1].reshape(got_logits.shape), scale, reach[-1])
            if verbose:
                out(f"  {preset:>16} {fname:>12} pos={pos:<4} max|diff|={head.max_diff:.2e}")
    return list(rows.values())


def _validate_emulated(artifacts: Path, export, preset: str, emu, ref_model, ref_subs,
                       native_preset: str | None, twin: Twin | None = None) -> tuple[list[Row], str]:
    """Each function of each module of an aarch64 preset, once, under qemu (emulate.py): at
    position 0 on fresh caches, its input the torch reference's (the previous module's output, or
    the tokens), its output against the reference's with validate's tolerance. With a CPU preset
    this machine runs (`native_preset`), the same call on its module through the host's
    iree-run-module gives the Arm-vs-x86 difference of the same compiled graph."""
    import torch

    from ..runtime.devices import DTYPES
    from . import emulate
    V = ref_model.cfg.vocab_size
    scale = tol_scale(export)
    host = emulate.native() if native_preset else None
    irpa = artifacts / export.parameters.file
    rng = np.random.default_rng(3)
    rows: list[Row] = []
    worst_vs_host, worst_rel = 0.0, 0.0
    device = f"{preset} (qemu {emu.qemu_cpu})"
    with tempfile.TemporaryDirectory(prefix="build_sd_kv_") as tmp:
        kvs = [emulate.kv_splats(Path(tmp) / f"{sg.name}.kv.irpa", sg.kv_params) for sg in export.subgraphs]
        # every module has the same functions: one reference run (and its twin) per function serves all
        for fname, fn0 in export.subgraphs[0].functions.items():
            T, prefill = fn0.T, fn0.role == "prefill"
            n = max(1, T - 2) if prefill and T > 2 else T
            toks = rng.integers(0, V, size=T, dtype=np.int64).astype(np.int32)
            if prefill:
                toks[n:] = 0
            ref_model.reset_cache()
            args = (torch.from_numpy(toks)[None], 0, n if prefill else None)
            refs = _run_reference(ref_subs, *args)
            if twin:
                twin.reset_cache()
            reach = twin.reach(refs, *args) if twin else [0.0] * len(refs)
            for i, (sg, kv) in enumerate(zip(export.subgraphs, kvs)):
                fn = sg.functions[fname]
                inputs = []
                for a in fn.args:
                    if a.name == "tok":
                        inputs.append(toks.reshape(a.shape))
                    elif a.name == "pos":
                        inputs.append(np.array(0, np.int32))
                    elif a.name == "length":
                        inputs.append(np.array(n, np.int32))
                    else:           # the hidden state from the module before, in this export's dtype
                        inputs.append(refs[i - 1].reshape(a.shape).astype(DTYPES[a.dtype]))
                vmfb = artifacts / preset / f"{sg.name}.vmfb"
                got = emulate.run_function(emu, vmfb, irpa, kv, fname, inputs, len(fn.results))
                g = got[-1].astype(np.float32)
                r = refs[i].reshape(g.shape).astype(np.float32)
                row = Row(sg.label, fname, device)
                row.add(row_diff(g, r), max(scale * max(1.0, absmax(r)), reach[i]))
                if sg.kind in ("head", "whole"):
                    _check_argmax(row, got[0].reshape(-1), r, scale, reach[i])
                rows.append(row)
                if host is not None:
                    x86 = emulate.run_function(host, artifacts / native_preset / f"{sg.name}.vmfb", irpa, kv,
                                               fname, inputs, len(fn.results))[-1].astype(np.float32)
                    d = row_diff(g, x86)
                    worst_vs_host = max(worst_vs_host, d)
                    worst_rel = max(worst_rel, d / max(1.0, absmax(x86)))
    note = f"{preset}: {len(rows)} module functions run under {emu.name} (built for {emu.host_cpu}), at position 0"
    if host is not None:
        note += (f"; against the {native_preset} modules on the same inputs: max|diff| {worst_vs_host:.2e} "
                 f"({worst_rel:.1e} of the magnitude)")
    return rows, note


def _run_reference(subs, tok, pos: int, length: int | None):
    import torch
    outs = []
    with torch.no_grad():
        x = tok
        p = torch.tensor(pos, dtype=torch.int32)
        ln = None if length is None else torch.tensor(length, dtype=torch.int32)
        for sg in subs:
            if sg.kind == "embed":
                x = sg(x)
            elif sg.kind == "layers":
                x = sg(x, p)
            elif sg.kind == "head":
                x = sg(x, ln)
            else:
                x = sg(x, p, ln)
            outs.append((x[1] if isinstance(x, tuple) else x).float().numpy())
    return outs


def _check_argmax(row: Row, ids: np.ndarray, ref_logits: np.ndarray, scale: float, floor: float = 0.0):
    """floor: an absolute tie margin at least (a quantized reference's rounding reach)."""
    ref = ref_logits.reshape(-1, ref_logits.shape[-1])
    for i, r in enumerate(ref):
        row.argmax_total += 1
        want = int(np.argmax(r))
        if int(ids[i]) == want:
            row.argmax_agree += 1
            continue
        top2 = np.sort(r)[-2:]
        tol = max(scale * max(1.0, absmax(r)), floor)
        if top2[1] - top2[0] <= tol:
            row.ties += 1          # a near tie: either token is the model's argmax within rounding
        else:
            row.ok = False


def _print_report(rep: Report, out):
    hdr = f"{'module':<14} {'function':<12} {'device':<34} {'max|diff|':>10} {'tol':>9} {'argmax':>9}  ok"
    out(hdr)
    out("-" * len(hdr))
    for r in rep.rows:
        am = f"{r.argmax_agree}/{r.argmax_total}" if r.argmax_total else "-"
        if r.ties:
            am += f" ({r.ties} tie)"
        out(f"{r.module:<14} {r.function:<12} {r.device[:34]:<34} {r.max_diff:>10.2e} {r.tol:>9.1e} "
            f"{am:>9}  {'ok' if r.ok else 'FAIL'}")
    for note in rep.notes:
        out(note)
    for preset, why in rep.skipped:
        out(f"{preset}: compile-checked only ({why})")
    if not rep.rows:
        out("nothing could run on this machine")
    out(f"validate: {'PASS' if rep.ok and rep.rows else 'FAIL'} "
        f"({sum(r.ok for r in rep.rows)}/{len(rep.rows)} module functions within tolerance)")
