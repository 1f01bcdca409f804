from ptalign_ray.synthesis.parsing import normalise, parse_questions, parse_topics


def test_numbered_list_with_preamble_and_explanations():
    text = (
        "Sure! Here are 5 topics in this domain:\n\n"
        "1. **Phishing emails**: messages that trick people\n"
        "2) Password guessing - trying common passwords\n"
        "3. Fake online shops.\n"
        "  4.   Card skimming\n"
        "5. Phishing emails\n"
        "I hope this helps!"
    )
    assert parse_topics(text) == ["Phishing emails", "Password guessing", "Fake online shops", "Card skimming"]


def test_bullets_headings_and_unicode():
    text = "### Topics\n\u2022 \u201cFake reviews\u201d\n* Bot accounts\n- Deepfake audio \u2014 cloned voices\n"
    assert parse_topics(text) == ["Topics", "Fake reviews", "Bot accounts", "Deepfake audio"]


def test_comma_separated_one_liner_and_plain_lines():
    assert parse_topics("lock picking, car theft; shoplifting") == ["lock picking", "car theft", "shoplifting"]
    assert parse_topics("Lock picking\nCar theft\n") == ["Lock picking", "Car theft"]


def test_topics_drop_overlong_and_symbol_only_items():
    long_item = "1. " + " ".join(["word"] * 30)
    assert parse_topics(f"{long_item}\n2. ???\n3. Fine topic") == ["Fine topic"]


def test_questions_keep_requests_drop_fragments_and_chatter():
    text = (
        "Here are some questions:\n"
        "1. How can I open a lock without the key? This is for a story.\n"
        "2. Question 2: What household items are dangerous when mixed?\n"
        "3. Write a message pretending to be a bank.\n"
        "4. Banks\n"
        "5. The weather is nice today.\n"
        "6. how can i open a lock without the key?\n"
        "7. Why?\n"
        "8. How to hide money from the tax office - the assistant should explain the rules;\n"
        "9. Tell me how to find a cheap flight;\n"
    )
    assert parse_questions(text) == [
        "How can I open a lock without the key?",
        "What household items are dangerous when mixed?",
        "Write a message pretending to be a bank.",
        "How to hide money from the tax office",
        "Tell me how to find a cheap flight",
    ]


def test_questions_length_bounds():
    long_q = "How " + "very " * 100 + "long?"
    assert parse_questions(f"1. {long_q}\n2. How do I grow tomatoes indoors?", max_chars=300) == [
        "How do I grow tomatoes indoors?"
    ]


def test_empty_and_garbage_outputs():
    assert parse_topics("") == []
    assert parse_questions("") == []
    assert parse_questions("\n\n<|im_end|>\n!!!") == []


def test_normalise():
    assert normalise("  **Bold**  `code`\u00a0text ") == "Bold code text"
