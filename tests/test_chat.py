"""Chat: templates rendered as transformers renders them, `run --chat/--system/--prompt-file`, and a
multi-turn `chat` session whose turns equal one-shot generations of the accumulated ids."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

from conftest import BUILD, _build
from helpers import cli, run_json

# a ChatML-like template over the tests' tokenizer (<s> = 1, </s> = 2 = EOS)
TEMPLATE = ("{% for m in messages %}{{ bos_token }}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
            "{% if add_generation_prompt %}{{ bos_token }}assistant: {% endif %}")
LLAMA3_LIKE = ("{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set sys = messages[0]['content']|trim %}"
               "{%- set messages = messages[1:] %}{%- else %}{%- set sys = 'You are helpful.' %}{%- endif %}"
               "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + sys + '<|eot_id|>' }}"
               "{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + "
               "m['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
               "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the quick fox?"},
                {"role": "assistant", "content": "a lazy dog."}, {"role": "user", "content": " hello world "}]


@pytest.mark.parametrize("template", [TEMPLATE, LLAMA3_LIKE])
def test_templates_render_like_transformers(tokenizer_json, template):
    from transformers import PreTrainedTokenizerFast

    from build_sd.runtime.chat import ChatTemplate
    ref = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), bos_token="<s>", eos_token="</s>",
                                  chat_template=template)
    ours = ChatTemplate({"chat_template": template, "bos_token": "<s>", "eos_token": "</s>"})
    for msgs in (CONVERSATION[1:2], CONVERSATION, CONVERSATION[1:]):
        for gen in (True, False):
            assert ours.render(msgs, gen) == ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def test_the_real_smollm2_template_renders_like_transformers(tmp_path):
    from transformers import AutoTokenizer

    from build_sd.chatpair.fetch import target_gguf
    from build_sd.errors import UserError
    from build_sd.runtime.chat import ChatTemplate
    try:
        src = target_gguf(download=False)
    except UserError:
        pytest.skip("SmolLM2's GGUF is not in build_sd's cache (python -m build_sd.chatpair.fetch)")
    rc, _, err = cli("import", src, "--out", tmp_path / "smol", "--dtype", "f16")
    assert rc == 0, err
    ref = AutoTokenizer.from_pretrained(str(tmp_path / "smol"))
    ours = ChatTemplate(json.loads((tmp_path / "smol" / "tokenizer_config.json").read_text()))
    for msgs in (CONVERSATION[1:2], CONVERSATION, CONVERSATION[1:]):
        text = ours.render(msgs, True)
        assert text == ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        want = ref.apply_chat_template(msgs, add_generation_prompt=True)
        want = want["input_ids"] if isinstance(want, dict) or hasattr(want, "keys") else want
        assert ref(text, add_special_tokens=False)["input_ids"] == list(want)


@pytest.fixture(scope="module")
def chat_bundle(target_ckpt, draft_art, tmp_path_factory):
    ck = BUILD / "ckpt" / "chat_target"
    if not ck.exists():
        shutil.copytree(target_ckpt, ck)
    (ck / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": TEMPLATE, "bos_token": "<s>", "eos_token": "</s>"}))
    art = _build("chat_target", ck, ["host"], gammas="1,2,3", prefill="8,16", max_context=96)
    out = tmp_path_factory.mktemp("chat") / "bundle"
    rc, _, err = cli("bundle", "--draft", draft_art, "--target", art, "--place", "draft=host", "--place",
                     "target=host", "--gamma", 2, "--out", out)
    assert rc == 0, err
    return out


def _open(bundle):
    from build_sd.runtime.session import open_bundle
    return open_bundle(bundle)


def test_run_chat_encodes_the_rendered_template(chat_bundle):
    from build_sd.runtime.chat import ChatTemplate
    from build_sd.runtime.sampling import GreedyAcceptor
    from build_sd.runtime.speculative import generate
    rc, out, err = cli("run", chat_bundle, "--chat", "the quick fox", "--system", "Be brief.", "--json",
                       "--max-new-tokens", 12)
    assert rc == 0, err
    res = json.loads(out)
    s = _open(chat_bundle)
    text = ChatTemplate({"chat_template": TEMPLATE, "bos_token": "<s>", "eos_token": "</s>"}).render(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "the quick fox"}])
    ids = s.tokenizer.encode(text, add_special_tokens=False).ids
    assert res["prompt_tokens"] == len(ids) and ids[0] == 1
    ref = generate(s.target, None, ids, 0, GreedyAcceptor(), 12, s.eos_ids)
    assert res["token_ids"] == ref.token_ids


def test_prompt_file_is_read_verbatim(chat_bundle, tmp_path):
    (tmp_path / "p.txt").write_text("hello world\n\n")
    a = run_json(chat_bundle, "hello world\n\n", max_new_tokens=8)
    rc, out, err = cli("run", chat_bundle, "--prompt-file", tmp_path / "p.txt", "--json", "--max-new-tokens", 8)
    assert rc == 0, err
    b = json.loads(out)
    assert b["token_ids"] == a["token_ids"] and b["prompt_tokens"] == a["prompt_tokens"]
    c = run_json(chat_bundle, "hello world", max_new_tokens=8)
    assert c["prompt_tokens"] < b["prompt_tokens"]            # the newlines are tokens


@pytest.mark.parametrize("args,message", [
    (["--system", "x", "--prompt", "hi"], "--system goes with --chat"),
])
def test_chat_option_errors(chat_bundle, args, message):
    rc, _, err = cli("run", chat_bundle, *args)
    assert rc == 2 and message in err


def test_no_chat_template_is_one_line(draft_art, tmp_path):
    out = tmp_path / "b"
    rc, _, err = cli("bundle", "--draft", draft_art, "--target", draft_art, "--place", "draft=host", "--place",
                     "target=host", "--gamma", 1, "--out", out)
    assert rc == 0, err
    rc, _, err = cli("run", out, "--chat", "hi")
    assert rc == 2 and "no chat template" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("gamma,lookup", [(0, 0), (2, 0), (2, 4)], ids=["target-only", "g2", "g2-lookup"])
def test_multi_turn_chat_equals_one_shot_runs_of_the_accumulated_ids(chat_bundle, gamma, lookup, monkeypatch):
    """lookup: its blocks leave the draft behind; each turn settles it, so the next one still reuses
    every token both caches hold."""
    from build_sd.runtime.conversation import chat
    from build_sd.runtime.sampling import GreedyAcceptor
    from build_sd.runtime.speculative import generate
    turns = ["the quick brown fox", "/reset", "the dog", "a fox", "hello"]     # the bundle holds 96 tokens
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    chat(chat_bundle, max_new_tokens=8, gamma=gamma, as_json=True,
         stdin=io.StringIO("\n".join(turns) + "\n"), lookup=lookup)
    rows = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["turn"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["reused"] == 0 and rows[1]["reused"] == 0          # /reset starts over
    assert rows[2]["reused"] > len(rows[1]["prompt_ids"]) and rows[3]["reused"] > len(rows[2]["prompt_ids"])
    assert rows[2]["prompt_ids"][:len(rows[1]["prompt_ids"])] == rows[1]["prompt_ids"]
    assert (sum(r["metrics"]["lookup_blocks"] for r in rows) > 0) == bool(lookup)
    s = _open(chat_bundle)
    for r in rows:                                       # cache reuse changes nothing but the time
        ref = generate(s.target, s.draft if gamma else None, r["prompt_ids"], gamma, GreedyAcceptor(), 8, s.eos_ids)
        assert r["token_ids"] == ref.token_ids, r["turn"]
        assert np.all(np.asarray(r["prompt_ids"][:r["reused"]]) >= 0)


def test_a_full_context_says_so(chat_bundle, capsys):
    from build_sd.runtime.conversation import chat
    long = " ".join(["the quick brown fox"] * 12)
    chat(chat_bundle, max_new_tokens=40, gamma=2, as_json=True, stdin=io.StringIO(f"{long}\n{long}\n{long}\n"))
    err = capsys.readouterr().err
    assert "context full" in err and "/reset" in err


def test_calibrate_takes_chat_prompts(chat_bundle, tmp_path):
    (tmp_path / "p.txt").write_text("the quick fox\nhello world\n")
    rc, _, err = cli("calibrate", chat_bundle, "--prompts", tmp_path / "p.txt", "--chat", "--max-new-tokens", 6,
                     "--out", tmp_path / "c.json")
    assert rc == 0, err
    cal = json.loads((tmp_path / "c.json").read_text())
    assert cal["prompts"] == 2 and cal["greedy"]["iterations"] > 0
    assert cal["draft_precision"] in ("f32", "f16") and cal["target_precision"] in ("f32", "f16")
