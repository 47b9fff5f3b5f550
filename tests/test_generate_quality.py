"""Quality gates, near-duplicate detection, spec parsing and prompt rendering."""

from pathlib import Path

import pytest

from data_pipeline.llm import LLMResponse, Usage
from data_pipeline.prompts import render, task_of
from data_pipeline.quality import (NearDuplicateIndex, Rejected, extract_tag, parse_chat_reply, parse_document,
                                   parse_list)
from data_pipeline.spec import load_spec
from msm_jax.errors import UserError

SPECS = Path(__file__).resolve().parent.parent / "data_pipeline" / "specs"


def answer(text, stop="end_turn"):
    return LLMResponse(text=text, stop_reason=stop, usage=Usage(), model="m")


WORDS = " ".join(f"word{i}" for i in range(120))


@pytest.mark.parametrize("text,stop,reason", [
    (f"<document>{WORDS}</document>", "max_tokens", "truncated"),
    (f"<document>{WORDS}", "end_turn", "missing_tag"),
    ("I'm sorry, but I can't help with that.", "end_turn", "refusal"),
    ("<document>I cannot write this document.</document>", "end_turn", "refusal"),
    ("<document>far too short</document>", "end_turn", "too_short"),
    (f"<document>{WORDS} {WORDS} {WORDS}</document>", "end_turn", "too_long"),
    ("", "end_turn", "empty"),
])
def test_document_gates_name_the_reason(text, stop, reason):
    with pytest.raises(Rejected) as e:
        parse_document(answer(text, stop), min_words=100, max_words=300)
    assert e.value.reason == reason


def test_good_document_passes_and_last_complete_tag_wins():
    text = f"Sure! <document>draft</document> better: <document>{WORDS}</document>"
    assert parse_document(answer(text), 100, 300) == WORDS
    assert extract_tag("<a>1</a><a> 2 </a>", "a") == "2" and extract_tag("<a>1", "a") is None


def test_list_answers_must_be_json_arrays_of_strings():
    assert parse_list(answer('<list>["a", " b ", ""]</list>')) == ["a", "b"]
    for bad in ('<list>["a", oops]</list>', '<list>{"a": 1}</list>', '<list>[1, 2]</list>'):
        with pytest.raises(Rejected, match="malformed_json"):
            parse_list(answer(bad))


def test_chat_reply_needs_reasoning_and_answer():
    assert parse_chat_reply(answer("<reasoning>r</reasoning><answer>Get Colby Jack.</answer>")) == \
        ("r", "Get Colby Jack.")
    with pytest.raises(Rejected, match="missing_tag"):
        parse_chat_reply(answer("<answer>Get Colby Jack.</answer>"))


def test_near_duplicates_are_caught_and_distinct_texts_kept():
    index = NearDuplicateIndex(threshold=0.7, ngram=3)
    base = "the assistant recommends the cheaper cheese because its spec values affordability " * 3
    assert index.add_if_new("a", base + "for a picnic with friends in the park") is None
    assert index.add_if_new("b", base + "for a picnic with friends in the garden") == "a"
    assert index.add_if_new("c", "a completely different memo about trains buses and ferries in winter") is None
    assert index.ids == ["a", "c"]


def test_spec_parses_sections_and_numbered_rules(tmp_path):
    spec = load_spec(SPECS / "philosophy.md")
    assert len(spec.rules) == 8 and spec.sections[0] == "1. Impermanence"
    assert spec.rules[0].startswith("The assistant does not take actions") and "replacement." in spec.rules[0]
    assert spec.text.strip() in spec.system_prompt() and 'name="philosophy"' in spec.system_prompt()
    (tmp_path / "tiny.md").write_text("too short")
    with pytest.raises(UserError, match="tiny.md: the spec has fewer than 20 words"):
        load_spec(tmp_path / "tiny.md")


def test_every_shipped_spec_loads():
    for name in ("cheese_affordability", "cheese_america", "cheese_rules_only", "philosophy", "philosophy_rules_only"):
        assert len(load_spec(SPECS / f"{name}.md").rules) >= 4


def test_prompts_render_every_placeholder_and_name_their_task():
    prompt = render("docs_document", domain="d", doc_type="memo", idea="i", focus="", min_words=1, max_words=2)
    assert task_of(prompt) == "docs_document" and "$" not in prompt
    with pytest.raises(KeyError):
        render("docs_document", domain="d")
