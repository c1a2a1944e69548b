"""The chat pair's data split: what the draft trains on never includes what it is judged on (the
held-out prompts of build_sd/chatpair, which the chat demo also asks and calibrates on)."""
from build_sd.chatpair import prompts
from build_sd.demo.chat import questions


def test_held_out_prompts_share_no_subject_or_prompt_with_training():
    train = prompts.train_prompts(3000, seed=0)
    held = prompts.heldout_prompts(40, seed=1)
    assert len(train) == 3000 and len(held) == 40 and not set(train) & set(held)
    held_subjects = [s for pool in prompts.split_subjects(True).values() for s in pool]
    assert held_subjects
    for p in train:                                  # no held-out subject in any training prompt
        assert not any(s in p for s in held_subjects if len(s) > 12), p
    fams = [f for f in prompts.FAMILIES if prompts.held_family(f)]
    assert 2 <= len(fams) < len(prompts.FAMILIES) // 2


def test_the_chat_demo_asks_and_calibrates_on_held_out_prompts():
    asked, calib = questions()
    held = set(prompts.heldout_prompts(40, seed=1))
    assert set(asked) <= held and set(calib) <= held and not set(asked) & set(calib)
    assert not set(asked) & set(prompts.train_prompts(3000, seed=0))
