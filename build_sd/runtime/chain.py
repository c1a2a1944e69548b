"""One model on the IREE runtime: its subgraph modules chained embed -> layers... -> head.

A `ModelChain` owns, per device it uses, one VM context holding the io-parameters module (the
model's .irpa plus a zero splat for each KV cache of the subgraphs on that device) and the vmfb
modules placed there. Module state (the KV caches) persists across calls, so the host only
passes token ids, an int32 start position and, for prefill, the prompt length.

Hidden states cross devices only where the placement splits the model; KV caches never leave
their device. Functions are invoked through VmContext.invoke with prebuilt argument lists
(~18 us a call on local-task, against ~30 us through FunctionInvoker's packer).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import iree.runtime as rt

from ..contract import ExportRecord, SubgraphRecord, SubgraphSpec, function_name
from ..errors import UserError
from .devices import DTYPES, Device, DeviceLost, DevicePool, device_lost
from .weights import add_weights


@dataclass
class PlacedSubgraph:
    meta: SubgraphRecord  # the export contract of the subgraph (kind, functions, kv_params)
    vmfb: Path
    driver: str
    preset: str


@dataclass
class _Loaded:
    meta: SubgraphRecord
    device: Device
    context: object
    functions: dict = field(default_factory=dict)   # name -> VmFunction
    spec: SubgraphSpec = None                       # the meta's kind/start/end, parsed once

    def __post_init__(self):
        self.spec = self.meta.spec


@dataclass
class StepOutput:
    ids: np.ndarray                 # (T',) int32 greedy next tokens
    logits_bv: object | None        # device buffer view (1, T', V) f32, downloaded on demand
    device: Device | None
    hidden: list = field(default_factory=list)   # (label, np.ndarray) when traced

    chain: "ModelChain | None" = None

    def logits(self) -> np.ndarray:
        """(T', V) f32 logits, read from the device on first use (the read is device time)."""
        t = time.perf_counter()
        out = self.device.download(self.logits_bv, DTYPES["f32"])[0]
        if self.chain is not None:
            self.chain.call_s += time.perf_counter() - t
        return out


class _LoadFailed(Exception):
    """A module that would not register on its device (kept apart to tell a lost device)."""

    def __init__(self, vmfb: Path, driver: str, err: Exception, meta: SubgraphRecord | None = None):
        self.vmfb, self.driver, self.err, self.meta = vmfb, driver, err, meta

    def first_line(self) -> str:
        return str(self.err).splitlines()[0][:200]

    def user_error(self) -> UserError:
        if "RESOURCE_EXHAUSTED" in str(self.err) and self.meta is not None:
            # a module over the device's largest allocation (docs/FINDINGS.md): say so in numbers
            from .devices import max_allocation_bytes
            limit = max_allocation_bytes(self.driver)
            sizes = (f"weights {self.meta.parameter_bytes} bytes, KV caches {self.meta.kv_bytes} bytes"
                     if self.meta.parameter_bytes else f"KV caches {self.meta.kv_bytes} bytes")
            return UserError(f"{self.vmfb}: does not fit the {self.driver} device ({sizes}; its largest "
                             f"allocation: {limit if limit else 'unknown'} bytes): export again with "
                             "--max-module-bytes below it")
        return UserError(f"{self.vmfb}: cannot load module on {self.driver} ({self.first_line()})")


class ModelChain:
    """random_weights: draw the parameters (seeded) instead of reading `irpa` (weights.py)."""

    def __init__(self, pool: DevicePool, export: ExportRecord, irpa: Path, placed: list[PlacedSubgraph],
                 random_weights: int | None = None):
        self.export = export
        self.irpa, self.placed, self.random_weights = irpa, placed, random_weights
        self.dtype = DTYPES[export.dtype]
        self.max_context = export.max_context
        self.prefill_buckets = sorted(export.prefill)
        self.verify_T = sorted({f.T for sg in export.subgraphs for f in sg.functions.values() if f.role == "verify"})
        self.calls = 0
        self.call_s = 0.0
        # per (subgraph, function): [seconds, calls] spent in the loop itself, transfers into the
        # stage and the ids readback included; None = off. The profiler's in-situ figures.
        self.stage_times: dict | None = None
        by_driver: dict[str, list[PlacedSubgraph]] = {}
        for ps in placed:
            by_driver.setdefault(ps.driver, []).append(ps)
        self.stages: list[_Loaded] = []
        contexts = {}
        for driver, group in by_driver.items():
            dev = pool.get(driver)
            try:
                ctx = self._load(dev, irpa, group)
            except _LoadFailed as f:
                if device_lost(driver, f.err):      # the caller may retry: retry_if_lost
                    raise DeviceLost(driver, f.vmfb.name, f.first_line()) from None
                raise f.user_error() from None
            contexts[driver] = (dev, ctx)
        for ps in placed:   # keep the model's order: embed, layers..., head
            dev, ctx = contexts[ps.driver]
            mod = getattr(ctx.modules, ps.meta.name)
            loaded = _Loaded(ps.meta, dev, ctx)
            for fname in ps.meta.functions:
                loaded.functions[fname] = mod.vm_module.lookup_function(fname)
            self.stages.append(loaded)
        kinds = [s.meta.kind for s in self.stages]
        if kinds[0] not in ("embed", "whole") or kinds[-1] not in ("head", "whole"):
            raise UserError(f"incomplete placement: subgraphs {kinds}")

    def _load(self, dev: Device, irpa: Path, group: list[PlacedSubgraph]):
        """One VM context on `dev`: the parameters (weights + KV-cache splats), then the modules."""
        idx = rt.ParameterIndex()
        add_weights(idx, self.export, irpa, self.random_weights)
        pattern = np.zeros(1, self.dtype)
        for ps in group:
            for kv in ps.meta.kv_params:
                idx.add_splat(kv.name, pattern, kv.bytes)
        ctx = rt.SystemContext(config=dev.config)
        ctx.add_vm_module(rt.create_io_parameters_module(dev.instance, idx.create_provider(scope="model")))
        for ps in group:
            try:
                mod = rt.VmModule.copy_buffer(dev.instance, ps.vmfb.read_bytes())
                ctx.add_vm_module(mod)
            except Exception as e:  # noqa: BLE001
                raise _LoadFailed(ps.vmfb, dev.driver, e, ps.meta) from None
        return ctx

    # ---- function choice ------------------------------------------------------------------
    def prefill_bucket(self, n: int) -> int:
        for P in self.prefill_buckets:
            if P >= n:
                return P
        raise UserError(f"prompt of {n} tokens exceeds the largest prefill bucket "
                        f"({self.prefill_buckets[-1]})")

    def function_for(self, role: str, T: int) -> str:
        if role != "prefill" and T > 1 and T not in self.verify_T:
            raise UserError(f"no verify function for {T} tokens (built: {self.verify_T})")
        return function_name(role, T)

    # ---- one forward step -------------------------------------------------------------------
    def step(self, tokens: np.ndarray, pos: int, role: str = "auto", length: int | None = None,
             trace: bool = False) -> StepOutput:
        """Run `tokens` at positions pos..pos+T-1 through every subgraph.

        role: prefill (tokens padded to a bucket, `length` real ones), or decode/verify by T.
        Returns the head's greedy ids; logits stay on the device until asked for.
        """
        t0 = time.perf_counter()
        T = int(tokens.shape[-1])
        if role == "auto":
            role = "decode" if T == 1 else "verify"
        if pos + T > self.max_context:
            raise UserError(f"positions {pos}..{pos + T - 1} exceed the context size {self.max_context}")
        fname = self.function_for(role, T)
        x = None
        prev_dev = None
        pos_bv: dict[int, object] = {}
        out = StepOutput(ids=None, logits_bv=None, device=None, chain=self)
        times = self.stage_times
        for st in self.stages:
            ts = time.perf_counter()
            dev, spec = st.device, st.spec
            if spec.has_tokens_in:
                x = dev.upload(tokens.reshape(1, T).astype(np.int32, copy=False))
            elif prev_dev is not dev:
                x = dev.transfer_from(prev_dev, x, self.dtype)
            if spec.has_layers and id(dev) not in pos_bv:
                pos_bv[id(dev)] = dev.upload(np.array(pos, np.int32))
            length_bv = (dev.upload(np.array(length, np.int32))
                         if role == "prefill" and spec.has_head else None)
            res = self.invoke(st, fname, x, pos_bv.get(id(dev)), length_bv)
            if len(res) == 1:
                x = res[0]
                if trace:
                    out.hidden.append((st.meta.label, dev.download(x, self.dtype)))
            else:
                out.ids = dev.download(res[0], DTYPES["i32"])[0]
                out.logits_bv, out.device = res[1], dev
            prev_dev = dev
            if times is not None:
                acc = times.setdefault((st.meta.name, fname), [0.0, 0])
                acc[0] += time.perf_counter() - ts
                acc[1] += 1
        self.call_s += time.perf_counter() - t0
        return out

    def invoke(self, st: _Loaded, fname: str, x, pos_bv=None, length_bv=None) -> list:
        """One subgraph function on its device: (x[, pos][, length]) -> its result views."""
        spec = st.spec
        args = rt.VmVariantList(3)
        args.push_ref(x)
        if spec.has_layers:
            args.push_ref(pos_bv)
        if length_bv is not None:
            args.push_ref(length_bv)
        nres = 2 if spec.has_head else 1
        rets = rt.VmVariantList(nres)
        try:
            st.context.vm_context.invoke(st.functions[fname], args, rets)
        except RuntimeError as e:
            if device_lost(st.device.driver, e):    # one line for the user, not a traceback
                raise DeviceLost(st.device.driver, f"{fname} of {st.meta.label}",
                                 str(e).splitlines()[0][:200], doing="running") from None
            raise
        self.calls += 1
        return [rets.get_as_object(i, rt.HalBufferView) for i in range(nres)]

    def warmup(self) -> float:
        """Call every function once (first calls pay one-time costs); returns the seconds spent.

        Harmless for the caches: every slot a generation reads was written by it first (the
        prefill rewrites 0..P-1, each later call writes its rows before attending to them).
        """
        t = time.perf_counter()
        for P in self.prefill_buckets:
            self.step(np.zeros(P, np.int32), 0, role="prefill", length=1)
        for T in [1] + self.verify_T:
            self.step(np.zeros(T, np.int32), 0)
        return time.perf_counter() - t

    def prefill(self, prompt: np.ndarray, pos: int = 0, trace: bool = False) -> StepOutput:
        """Prompt into the cache at pos..; returns the head's output for its last token.

        A prompt longer than the largest bucket is prefilled in chunks of that bucket (each chunk
        attends to the cache the previous ones wrote); the last chunk is padded to the smallest
        bucket that holds it.
        """
        prompt = np.asarray(prompt, np.int32).reshape(-1)
        n = int(prompt.shape[0])
        if n == 0:
            raise UserError("empty prompt")
        if pos + n > self.max_context:
            raise UserError(f"prompt of {n} tokens does not fit the context size {self.max_context}")
        big = self.prefill_buckets[-1]
        start = 0
        while n - start > big:                     # full chunks
            self.step(prompt[start:start + big], pos + start, role="prefill", length=big)
            start += big
        rest = n - start
        P = self.prefill_bucket(rest)
        if pos + start + P > self.max_context:
            # the padded bucket would run past the cache (a chat turn near the end of the context):
            # the last tokens go in one decode call each instead
            out = None
            for i in range(start, n):
                out = self.step(prompt[i:i + 1], pos + i)
            return out
        padded = np.zeros(P, np.int32)
        padded[:rest] = prompt[start:]
        return self.step(padded, pos + start, role="prefill", length=rest, trace=trace)
