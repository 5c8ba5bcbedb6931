"""Example reward functions with TRL's signature: fn(prompts, completions, **kwargs) -> list[float].

Use one with `--reward_fn examples/rewards.py:exact_answer`. Extra columns of the prompt file (for
example the demo world's `answer` column) arrive as keyword lists, one value per completion. With
chat-format prompts each completion is a message list, [{"role": "assistant", "content": text}].
"""


KIND = {"good", "great", "fresh", "tasty", "lovely", "warm", "sweet", "crisp"}


def _text(completion) -> str:
    return completion[0]["content"] if isinstance(completion, list) else completion


def kind_words(prompts, completions, **columns):
    """+1 per kind word, capped at 2, minus 1 per repeated word: rewards kindness, not spam."""
    scores = []
    for text in map(_text, completions):
        words = text.split()
        kind = min(sum(w in KIND for w in words), 2)
        scores.append(float(kind - (len(words) - len(set(words)))))
    return scores


def exact_answer(prompts, completions, answer, **columns):
    """1.0 when the completion states the reference `answer` as a word, else 0.0 (prompts without
    an answer score 0)."""
    return [1.0 if a and f" {a} " in f" {c.replace('.', ' . ')} " else 0.0
            for c, a in zip(map(_text, completions), answer)]
