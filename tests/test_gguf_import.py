"""GGUF import (build-sd import): tiny GGUFs written here as llama.cpp's converter writes them, each
tensor type and both tokenizer models; bad files; a .gguf wherever a checkpoint folder is taken; and
the real SmolLM2 file when it is in build_sd's cache (python -m build_sd.chatpair.fetch)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gguf_files import GGUF_TYPES, write_gguf
from helpers import TEXT, cli, make_checkpoint

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SAMPLES = TEXT + ["In 2024 there were 1234567 cats,  and\n\n  19 dogs.", "  leading spaces\tand tabs\n",
                  "I'm sure you've seen it; they'll know.", "Über naïve café «quotes» 😀", "x = f(y) ** 2 # note"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer_json):
    return make_checkpoint(tmp_path_factory.mktemp("gguf") / "llama", vocab=384, hidden=64, layers=2, heads=4,
                           kv_heads=2, ffn=96, tokenizer=tokenizer_json)


def _import(src, out, *extra):
    rc, _, err = cli("import", src, "--out", out, *extra)
    assert rc == 0, err
    return out


def _logits(ckpt, state=None):
    import torch
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    if state is not None:
        m.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
        if m.config.tie_word_embeddings:
            m.tie_weights()
    ids = torch.tensor([[1, 5, 17, 42, 99, 7, 250, 3]])
    with torch.no_grad():
        return m(ids).logits[0].numpy()


@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_each_tensor_type_imports_to_the_dequantized_weights(tmp_path, tiny, qtype):
    from safetensors.numpy import load_file
    want = write_gguf(tiny, tmp_path / "m.gguf", qtype)
    out = _import(tmp_path / "m.gguf", tmp_path / "ckpt")
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # logits of the imported checkpoint = the reference model on the same (dequantized) weights
    ref = _logits(tiny, None if qtype == "F32" else want)
    np.testing.assert_allclose(_logits(out), ref, atol=1e-4, rtol=0)
    rec = json.loads((out / "import.json").read_text())
    # 7 matrices a layer, embed and head in qtype; the 5 norms stay F32
    assert rec["tensor_types"] == ({"F32": 21} if qtype == "F32" else {qtype: 16, "F32": 5})


def test_qwen2_and_tied_embeddings(tmp_path, tokenizer_json):
    ck = make_checkpoint(tmp_path / "qwen", kind="qwen2", vocab=384, hidden=64, layers=2, heads=4, kv_heads=2,
                         ffn=96, tie=True, tokenizer=tokenizer_json)
    write_gguf(ck, tmp_path / "q.gguf", "Q8_0", pre="qwen2")
    out = _import(tmp_path / "q.gguf", tmp_path / "ckpt", "--dtype", "f16")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "qwen2" and cfg["tie_word_embeddings"] is True
    assert cfg["torch_dtype"] == "float16"
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert "lm_head.weight" not in f.keys() and "model.layers.0.self_attn.q_proj.bias" in f.keys()
        assert f.get_tensor("model.embed_tokens.weight").dtype == np.float16


def test_llama3_rope_scaling_comes_back_from_rope_freqs(tmp_path, tokenizer_json):
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    ck = make_checkpoint(tmp_path / "l3", vocab=384, hidden=64, layers=1, heads=2, kv_heads=1, ffn=96,
                         tokenizer=tokenizer_json, rope_scaling=dict(scaling), rope_theta=500000.0)
    write_gguf(ck, tmp_path / "l3.gguf", "F32")
    out = _import(tmp_path / "l3.gguf", tmp_path / "ckpt")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rope_scaling"] == scaling and cfg["rope_theta"] == 500000.0
    np.testing.assert_allclose(_logits(out), _logits(ck, None), atol=1e-4, rtol=0)


@pytest.mark.parametrize("pre", ["gpt-2", "smollm"])
def test_byte_level_tokenizer_encodes_like_the_original(tmp_path, tiny, pre):
    from tokenizers import Tokenizer, pre_tokenizers
    orig = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    if pre == "smollm":      # SmolLM2's own tokenizer.json: digits one by one, then GPT-2's byte level
        orig.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                      pre_tokenizers.ByteLevel(add_prefix_space=False)])
    write_gguf(tiny, tmp_path / "m.gguf", "F16", pre=pre, chat_template=CHATML)
    out = _import(tmp_path / "m.gguf", tmp_path / "ckpt")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    for s in SAMPLES + ["<s>hello</s> world"]:
        assert tok.encode(s).ids == orig.encode(s).ids, s
        assert tok.decode(tok.encode(s).ids, skip_special_tokens=False) == s
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["chat_template"] == CHATML and tc["eos_token"] == "</s>" and tc["add_bos_token"] is False
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2


def test_sentencepiece_tokenizer_encodes_like_transformers(tmp_path, tiny):
    """llama (SPM) vocabularies: the reference is transformers' own GGUF tokenizer conversion."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    write_gguf(tiny, tmp_path / "m.gguf", "F32", tokenizer="llama")
    out = _import(tmp_path / "m.gguf", tmp_path / "ckpt")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ref = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    for s in SAMPLES + ["the lazy dog jumps", "quickly over the brown target model"]:
        if not s[0].isspace():         # transformers' Metaspace skips the prefix where the text has one
            assert tok.encode(s).ids == ref(s)["input_ids"], s
        assert tok.encode(s).ids[0] == 1                         # llama vocabularies add BOS by default
        assert tok.decode(tok.encode(s).ids, skip_special_tokens=True) == s
    assert tok.encode("the fox").tokens[1:] == ["\u2581the", "\u2581fox"]
    # llama.cpp (llm_tokenizer_spm, add_space_prefix) and SentencePiece prefix one space, always
    assert tok.encode("  the").tokens[1:] == ["\u2581", "\u2581", "\u2581the"]


@pytest.mark.parametrize("case,message", [
    ("not_gguf", "not a GGUF file"),
    ("truncated", "truncated or corrupt"),
    ("architecture", "unsupported architecture 'qwen3'"),
    ("tensor_type", "has type Q5_1"),
    ("no_tokenizer", "no tokenizer in the file"),
    ("pre_tokenizer", "unknown pre-tokenizer 'made-up'"),
])
def test_bad_gguf_is_one_line_and_exit_2(tmp_path, tiny, case, message):
    path = tmp_path / "bad.gguf"
    if case == "not_gguf":
        path.write_text("this is not a model\n")
    elif case == "truncated":
        write_gguf(tiny, tmp_path / "ok.gguf", "F32")
        path.write_bytes((tmp_path / "ok.gguf").read_bytes()[:30000])
    elif case == "architecture":
        write_gguf(tiny, tmp_path / "ok.gguf", "F32")
        data = (tmp_path / "ok.gguf").read_bytes()
        path.write_bytes(data.replace(b"llama", b"qwen3", 1))    # general.architecture, same length
    elif case == "tensor_type":
        write_gguf(tiny, path, "Q5_1")
    elif case == "no_tokenizer":
        write_gguf(tiny, path, "F32", skip=("tokenizer",))
    else:
        write_gguf(tiny, path, "F32", pre="made-up")
    rc, _, err = cli("import", path, "--out", tmp_path / "ckpt")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "ckpt").exists()


def test_a_gguf_is_taken_wherever_a_checkpoint_folder_is(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("BUILD_SD_CACHE", str(tmp_path / "cache"))
    write_gguf(tiny, tmp_path / "m.gguf", "Q8_0")
    rc, _, err = cli("plan", "--draft", tmp_path / "m.gguf", "--target", tmp_path / "m.gguf", "--platform",
                     "rk3588", "--alpha", "0.7", "--out", tmp_path / "plan.json")
    assert rc == 0, err
    assert err.count("importing it once") == 1                 # draft and target: one import, then the cache
    imported = next((tmp_path / "cache" / "gguf").iterdir())
    assert json.loads((imported / "import.json").read_text())["tensor_types"]["Q8_0"] == 16
    rc, _, err = cli("export", "--model", tmp_path / "m.gguf", "--out", tmp_path / "mlir", "--gammas", "1",
                     "--prefill", "8")
    assert rc == 0, err
    assert "importing" not in err
    assert json.loads((tmp_path / "mlir" / "export.json").read_text())["source"]["path"] == str(imported.resolve())


# ---- the real file ------------------------------------------------------------------------------------
def _real_gguf():
    from build_sd.chatpair.fetch import target_gguf
    from build_sd.errors import UserError
    try:
        return target_gguf(download=False)
    except UserError:
        pytest.skip("SmolLM2's GGUF is not in build_sd's cache (python -m build_sd.chatpair.fetch)")


def _llamacpp_bpe(text: str, regexes, ranks: dict, vocab: dict) -> list[int]:
    """llama.cpp's byte-level BPE (llm_tokenizer_bpe), written out plainly as the reference: each regex
    splits the previous pieces further (unmatched text stays a piece), bytes map to GPT-2's alphabet,
    then the lowest-ranked adjacent pair merges until none is in the merges."""
    import regex as re
    from build_sd.builder.gguf.vocab import _byte_alphabet
    pieces = [text]
    for r in regexes:
        nxt = []
        for p in pieces:
            at = 0
            for m in re.finditer(r, p):
                if m.start() > at:
                    nxt.append(p[at:m.start()])
                if m.end() > m.start():
                    nxt.append(m.group())
                at = m.end()
            if at < len(p):
                nxt.append(p[at:])
        pieces = nxt
    alphabet = _byte_alphabet()
    ids = []
    for p in pieces:
        word = [alphabet[b] for b in p.encode("utf-8")]
        while len(word) > 1:
            best = min(range(len(word) - 1), key=lambda i: ranks.get((word[i], word[i + 1]), 1 << 30))
            if (word[best], word[best + 1]) not in ranks:
                break
            word[best:best + 2] = [word[best] + word[best + 1]]
        ids += [vocab[w] for w in word]
    return ids


def test_real_smollm2_imports_like_transformers_and_tokenizes_like_llamacpp(tmp_path):
    import glob

    import torch
    from tokenizers import Tokenizer
    from transformers import AutoConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from build_sd.builder.gguf.reader import field, open_gguf
    from build_sd.builder.gguf.vocab import PRE_TOKENIZERS
    from safetensors.numpy import load_file
    src = _real_gguf()
    out = _import(src, tmp_path / "smol")
    with torch.device("meta"):
        shell = LlamaForCausalLM(AutoConfig.from_pretrained(str(out)))
    ref = load_gguf_checkpoint(str(src), return_tensors=True, model_to_load=shell)["tensors"]
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(ref) and len(got) == 272
    for k, v in ref.items():
        np.testing.assert_array_equal(got[k], np.asarray(v, np.float32), err_msg=k)

    reader = open_gguf(src)
    tokens, merges = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.merges")
    vocab = {t: i for i, t in enumerate(tokens)}
    ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    texts = SAMPLES + [open(p, errors="ignore").read()[:1500] for p in sorted(glob.glob("/usr/share/doc/*/copyright"))[:40]]
    regexes = PRE_TOKENIZERS["smollm"][0]
    for s in texts:
        assert tok.encode(s).ids == _llamacpp_bpe(s, regexes, ranks, vocab), s[:80]
        assert tok.decode(tok.encode(s).ids) == s
    chat = tok.encode("<|im_start|>user\nHi<|im_end|>\n").ids
    assert chat[0] == 1 and chat[-2] == 2


@pytest.mark.slow
def test_real_smollm2_chats_like_transformers(tmp_path):
    """The real model end to end: GGUF -> export (the .gguf path itself) -> compile -> bundle -> run
    --chat gives transformers' greedy ids on the same dequantized weights, token for token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from build_sd.builder.gguf import checkpoint_dir
    from conftest import BUILD
    src = _real_gguf()
    mlir, art = BUILD / "mlir" / "smollm2", BUILD / "artifacts" / "smollm2"
    for args in (["export", "--model", src, "--out", mlir, "--gammas", "1,2", "--prefill", "64", "--max-context", "160"],
                 ["compile", mlir, "--preset", "host", "--out", art],
                 ["bundle", "--draft", art, "--target", art, "--place", "draft=host", "--place", "target=host",
                  "--gamma", 2, "--out", tmp_path / "b"]):
        rc, _, err = cli(*args)
        assert rc == 0, err
    ckpt = checkpoint_dir(src)
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    for question in ("What is the capital of France?", "Write a haiku about the sea."):
        rc, out, err = cli("run", tmp_path / "b", "--chat", question, "--json", "--max-new-tokens", 24)
        assert rc == 0, err
        got = json.loads(out)
        ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                      return_tensors="pt")
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        with torch.no_grad():
            ref = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=2)[0, ids.shape[1]:].tolist()
        assert got["prompt_tokens"] == ids.shape[1]
        assert got["token_ids"] == ref, question
        assert got["metrics"]["alpha"] == 1.0                 # self-speculation accepts everything
