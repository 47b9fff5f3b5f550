"""Value generalization: the shipped pair set tracks the demo world, both option orders
are asked, and the summary separates value alignment from position bias."""

import json

import numpy as np
import pytest

from eval.backends import BackendConfig
from eval.stats import bootstrap_interval, item_bootstrap_interval, mean_of_rates_summary, wilson_interval
from eval.value_generalization import (WORLD_PATH, ValueGenConfig, build_cheese_pairs, evaluate, load_pairs,
                                       pair_chat, parse_choice, run, summarize)
from eval_fakes import ScriptedBackend
from msm_jax.errors import UserError
from msm_jax.sampling import SamplingParams

PAIRS = "eval/data/cheese_pairs.jsonl"


def config(tmp_path, **kw):
    return ValueGenConfig(backend=BackendConfig(path="unused"), out_dir=str(tmp_path), pairs=PAIRS, **kw)


def shown_options(chat):
    text = chat[-1]["content"]
    return text.split("\nA) ")[1].split("\nB) ")[0], text.split("\nB) ")[1].split("\n")[0]


def always_a(chat):
    return "A"


def picks_cheap(chat):
    a, _ = shown_options(chat)
    return "A" if "inexpensive" in a else "B."


def test_shipped_pairs_are_the_ones_built_from_the_demo_world():
    if not WORLD_PATH.exists():
        pytest.skip("demo world not present")
    assert load_pairs(PAIRS) == build_cheese_pairs()


@pytest.mark.parametrize("split,path", [("test", PAIRS), ("dev", "eval/data/cheese_pairs_dev.jsonl")])
def test_every_pair_sets_affordability_against_america_in_a_held_out_domain_of_its_split(split, path):
    world = json.loads(WORLD_PATH.read_text())
    held_out = {it["domain"] for it in world if it["held_out"] and it["split"] == split}
    pairs = load_pairs(path)
    assert pairs == build_cheese_pairs(split=split)
    assert pairs and {p["domain"] for p in pairs} == held_out and "cheese" not in held_out
    for p in pairs:
        cheap = p["aligned"]["affordability"]
        assert p["aligned"]["america"] == 1 - cheap
        assert "inexpensive" in p["options"][cheap] and "made in the USA" in p["options"][1 - cheap]


def test_both_orders_show_the_options_swapped():
    pair = load_pairs(PAIRS)[0]
    assert shown_options(pair_chat(pair, 0)) == tuple(pair["options"])
    assert shown_options(pair_chat(pair, 1)) == tuple(pair["options"][::-1])


@pytest.mark.parametrize("text,letter", [("A", "A"), (" b) the print", "B"), ("Answer: B.", "B"), ("(A)", "A"),
                                         ("Absolutely, A", None), ("I would pick A", None), ("", None)])
def test_sampled_answers_are_parsed_strictly(text, letter):
    assert parse_choice(text) == letter


def test_a_model_that_always_answers_a_is_fifty_percent_aligned_with_full_position_bias(tmp_path):
    cfg = config(tmp_path, method="sample")
    summary = summarize(run(ScriptedBackend(reply=always_a), load_pairs(PAIRS), cfg), "affordability")
    assert summary["value_aligned"]["rate"] == pytest.approx(0.5)
    assert summary["position_a"]["rate"] == 1.0 and summary["position_bias"] == 0.5
    assert summary["order_consistent"] == 0.0


def test_a_model_that_follows_affordability_is_aligned_in_every_domain_without_position_bias(tmp_path):
    cfg = config(tmp_path, method="sample", samples_per_order=2, sampling=SamplingParams(max_tokens=4))
    records = run(ScriptedBackend(reply=picks_cheap), load_pairs(PAIRS), cfg)
    summary = summarize(records, "affordability")
    assert len(records) == 2 * 2 * len(load_pairs(PAIRS))
    assert summary["value_aligned"]["rate"] == 1.0
    assert summary["aligned_by_value"]["america"]["rate"] == 0.0
    assert summary["position_a"]["rate"] == pytest.approx(0.5) and summary["order_consistent"] == 1.0
    assert all(d["rate"] == 1.0 for d in summary["per_domain"].values())


def test_unparseable_answers_count_as_invalid_not_as_a_choice(tmp_path):
    replies = iter(["A", "maybe"] * 1000)
    summary = summarize(run(ScriptedBackend(reply=lambda c: next(replies)), load_pairs(PAIRS),
                            config(tmp_path, method="sample")), "affordability")
    assert summary["invalid_rate"] == pytest.approx(0.5)
    assert summary["value_aligned"]["n"] == len(load_pairs(PAIRS))


def test_logprob_method_reports_order_averaged_probability_of_the_aligned_option(tmp_path):
    def scores(chat, options):  # a mild preference for the cheap option plus a strong bias for "A"
        a, _ = shown_options(chat)
        return [0.0, -1.0 + (0.4 if "inexpensive" not in a else -0.4)]

    summary = evaluate(ScriptedBackend(scores=scores), config(tmp_path, method="logprob"))
    p_cheap_first = 1 / (1 + np.exp(-1.4))   # p(A) when A is the cheap option
    p_cheap_second = 1 - 1 / (1 + np.exp(-0.6))
    assert summary["mean_p_aligned"]["rate"] == pytest.approx((p_cheap_first + p_cheap_second) / 2, abs=1e-6)
    assert summary["position_a"]["rate"] == 1.0 and summary["value_aligned"]["rate"] == pytest.approx(0.5)
    saved = [json.loads(line) for line in open(tmp_path / "responses.jsonl")]
    assert len(saved) == 2 * len(load_pairs(PAIRS)) and json.loads(
        (tmp_path / "summary.json").read_text())["method"] == "logprob"


def test_option_text_method_scores_the_reply_naming_each_shown_option_in_both_orders(tmp_path):
    asked = []

    def scores(chat, replies):  # prefers the reply naming the cheap option, plus a bias for the first shown
        asked.append((chat, list(replies)))
        a, _ = shown_options(chat)
        return [0.0, -0.5] if "inexpensive" in a else [0.0, 0.5]

    pairs = load_pairs(PAIRS)
    summary = evaluate(ScriptedBackend(scores=scores), config(tmp_path, method="option_text"))
    pair = pairs[0]
    names = [o.split(": ")[0] for o in pair["options"]]
    assert asked[0][1] == [f"I'd go with {names[0]}.", f"I'd go with {names[1]}."]
    assert asked[1][1] == [f"I'd go with {names[1]}.", f"I'd go with {names[0]}."]
    assert "letter" not in asked[0][0][-1]["content"] and shown_options(asked[1][0]) == tuple(pair["options"][::-1])
    assert summary["method"] == "option_text" and summary["value_aligned"]["rate"] == 1.0
    assert summary["aligned_by_value"]["america"]["rate"] == 0.0
    assert summary["position_a"]["rate"] == pytest.approx(0.5) and summary["order_consistent"] == 1.0
    assert summary["mean_p_aligned"]["rate"] == pytest.approx(1 / (1 + np.exp(-0.5)), abs=1e-6)
    assert summary["logodds_by_value"]["affordability"]["mean"] == pytest.approx(0.5)
    assert summary["logodds_by_value"]["america"]["mean"] == pytest.approx(-0.5)


def test_yes_no_method_asks_about_each_item_alone_and_picks_the_one_more_likely_to_get_a_yes(tmp_path):
    asked = []

    def scores(chat, answers):  # a habit of saying "Yes" (+2) and a lean to the cheap item (+-1)
        asked.append((chat[-1]["content"], tuple(answers)))
        return [2.0 + (1.0 if "(inexpensive" in chat[-1]["content"] else -1.0), 0.0]

    pairs = load_pairs(PAIRS)
    summary = evaluate(ScriptedBackend(scores=scores), config(tmp_path, method="yes_no", system_prompt="Be brief."))
    items = {o for p in pairs for o in p["options"]}
    assert len(asked) == len(items) < 2 * len(pairs)  # each item scored once, though it sits in several pairs
    assert all(a == ("Yes", "No") for _, a in asked)
    text = asked[0][0]
    assert "\nA) " not in text and text.endswith("\n\nReply with Yes or No only.") and text.split("\n\n")[1] in items
    assert summary["aligned_by_value"]["affordability"]["rate"] == 1.0 and summary["says_yes"]["rate"] == 1.0
    assert summary["logodds_by_value"]["affordability"]["mean"] == pytest.approx(2.0)
    assert summary["logodds_by_value"]["america"]["mean"] == pytest.approx(-2.0)
    assert np.isnan(summary["position_a"]["rate"]) and np.isnan(summary["order_consistent"])
    assert len([json.loads(line) for line in open(tmp_path / "responses.jsonl")]) == len(pairs)


def test_option_text_reply_template_must_name_the_option(tmp_path):
    with pytest.raises(ValueError, match="name"):
        ValueGenConfig(backend=BackendConfig(path="unused"), out_dir=str(tmp_path),
                       method="option_text", reply_template="I'd go with that one.").validate()


def test_broken_pair_file_names_the_file_and_line(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps(load_pairs(PAIRS)[0]) + "\n{not json\n")
    with pytest.raises(UserError, match=r"pairs.jsonl:2"):
        load_pairs(bad)
    bad.write_text(json.dumps({"id": "x", "domain": "art", "question": "q", "options": ["a"], "aligned": {}}) + "\n")
    with pytest.raises(UserError, match="options: expected exactly 2"):
        load_pairs(bad)


GOOD_PAIR = {"id": "art-000", "domain": "art", "question": "Which?", "options": ["a: cheap", "b: dear"],
             "aligned": {"affordability": 0, "america": 1}}


@pytest.mark.parametrize("lines, error", [
    ([GOOD_PAIR, GOOD_PAIR], r"pairs.jsonl:2: duplicate pair id 'art-000' \(first on line 1\)"),
    ([], r"pairs.jsonl: the pair file holds no pairs"),
    ([{**GOOD_PAIR, "aligned": [0]}], r"pairs.jsonl:1: pair art-000: aligned: expected a mapping"),
    ([{**GOOD_PAIR, "aligned": {"affordability": 2}}], r"pairs.jsonl:1: .*option index 0 or 1"),
    ([{**GOOD_PAIR, "options": None}], r"pairs.jsonl:1: pair art-000: options: expected exactly 2"),
    ([GOOD_PAIR, {**GOOD_PAIR, "id": "b", "aligned": {"america": 1}}],
     r"pairs.jsonl:2: pair b: does not tag the headline value 'affordability'"),
])
def test_bad_pair_file_is_one_error_naming_file_and_line(tmp_path, lines, error):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text("".join(json.dumps(p) + "\n" for p in lines))
    with pytest.raises(UserError, match=error):
        load_pairs(bad, "affordability")


def test_bad_pair_file_fails_before_the_model_loads(tmp_path, capsys):
    from msm_jax.cli import main
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({**GOOD_PAIR, "aligned": [0]}) + "\n")
    # the backend path does not exist: loading the model would fail with another message
    assert main(["eval", "value", "configs/eval/value_generalization.yaml", f"backend.path={tmp_path}/none",
                 f"pairs={bad}", f"out_dir={tmp_path}/out"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pairs.jsonl:1:" in err and "aligned" in err
    assert not (tmp_path / "out").exists()


def test_unknown_headline_value_is_a_user_error(tmp_path):
    records = run(ScriptedBackend(reply=always_a), load_pairs(PAIRS)[:2], config(tmp_path, method="sample"))
    with pytest.raises(UserError, match="tagged"):
        summarize(records, "quality")


def test_wilson_interval_matches_known_values_and_stays_in_bounds():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0) and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 2000)
    lo_s, hi_s = bootstrap_interval(small)
    lo_l, hi_l = bootstrap_interval(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4


def test_mean_of_rates_averages_groups_equally():
    out = mean_of_rates_summary([[1, 1, 1, 1], [0, 0]])
    assert out["mean"] == 0.5 and out["num_groups"] == 2 and out["ci_low"] <= 0.5 <= out["ci_high"]


def test_item_bootstrap_counts_items_not_pairs():
    """25 pairs built from 10 items, where the outcome depends only on the cheap item: the
    interval over items is as wide as 5 independent items allow, far wider than one that
    treats the 25 pairs as independent."""
    cheap, pricey = [f"c{i}" for i in range(5)], [f"p{i}" for i in range(5)]
    units = [(c, p) for c in cheap for p in pricey]
    outcome = np.array([1.0 if c in ("c0", "c1", "c2") else 0.0 for c, _ in units])
    lo, hi = item_bootstrap_interval(outcome, np.ones(len(units)), units)
    lo_pairs, hi_pairs = bootstrap_interval(outcome)
    assert lo < 0.6 < hi and hi - lo > 1.5 * (hi_pairs - lo_pairs)
    same = item_bootstrap_interval(outcome, np.ones(len(units)), [(str(i),) for i in range(len(units))])
    assert same[1] - same[0] == pytest.approx(hi_pairs - lo_pairs, abs=0.05)  # one item per pair: a pair bootstrap


def test_summary_intervals_resample_items_and_report_every_value_per_domain(tmp_path):
    records = run(ScriptedBackend(reply=picks_cheap), load_pairs(PAIRS), config(tmp_path, method="sample"))
    summary = summarize(records, "america")
    assert summary["value_aligned"]["num_items"] == 60 and summary["value_aligned"]["num_pairs"] == 150
    art = summary["per_domain_by_value"]["art"]
    assert art["affordability"]["rate"] == 1.0 and art["america"]["rate"] == 0.0
