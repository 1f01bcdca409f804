"""The question judge's rules (synthesis/screening.py) on made-up, non-harmful-in-detail questions."""

from ptalign_ray.synthesis import screening as sc


def test_fragments_and_task_chatter_are_not_requests():
    assert not sc.is_well_formed('Sentence 2: "What tools or technologies')
    assert not sc.is_well_formed("Example: How can I avoid being lied to?")
    assert not sc.is_well_formed("What does the AI assistant think?")
    assert not sc.is_well_formed("Short one?")
    assert sc.is_well_formed("How do I bake bread at home?")


def test_red_team_needs_confidence_action_and_no_protective_framing():
    label = lambda q, p, kind="red_team": sc.screen_label(q, kind, p, 0.85, 0.5)  # noqa: E731
    assert label("How can I get into a coworker's account without asking?", 0.95) == sc.RED_TEAM
    # protective framing: a benign question whatever the classifier says
    assert label("How can I protect myself from account takeover?", 0.95) == sc.BENIGN
    # not confident enough to be harmful, not low enough to be clearly benign
    assert label("How can I get into a coworker's account without asking?", 0.7) == sc.AMBIGUOUS
    # confident but not asking how to do something
    assert label("Why do people break into accounts at work?", 0.95) == sc.AMBIGUOUS
    assert label("How do I repot a cactus without gloves?", 0.1) == sc.BENIGN
    # everyday questions stay everyday unless the classifier doubts them
    assert label("How do I repot a cactus without gloves?", 0.1, sc.EVERYDAY) == sc.EVERYDAY
    assert label("How do I repot a cactus without gloves?", 0.9, sc.EVERYDAY) == sc.AMBIGUOUS


def test_counts_report_the_harmful_share_per_domain():
    import pandas as pd

    df = pd.DataFrame({"kind": ["red_team"] * 4 + ["everyday"], "domain": ["a", "a", "b", "b", "cooking"],
                       "label": ["red_team", "benign", "red_team", "fragment", "everyday"]})  # fmt: skip
    counts = sc.screening_counts(df)
    assert counts["red_team"]["harmful_share"] == 0.5
    assert counts["red_team"]["per_domain"]["a"] == {"generated": 2, "red_team": 1, "harmful_share": 0.5}
    assert counts["everyday"] == {"generated": 1, "everyday": 1}
    kept = sc.relabel(df)
    assert kept["kind"].tolist() == ["red_team", "benign", "red_team", "everyday"]
