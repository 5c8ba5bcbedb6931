"""`rlhfkit rm` on HuggingFaceH4/ultrafeedback_binarized's layout (built here from its published
schema, no download): `data` and `eval_data` both name the save_to_disk folder; training reads
train_prefs, evaluation test_prefs, and margin_from_scores turns the scores into margins."""

import json

from rlhfkit.train.rm import RMConfig
from rlhfkit.train.rm import run_rm


def row(i: int, good: str, bad: str) -> dict:
    prompt = f"how is the tea {i} ?"
    chosen = [{"role": "user", "content": prompt}, {"role": "assistant", "content": good}]
    rejected = [{"role": "user", "content": prompt}, {"role": "assistant", "content": bad}]
    return {"prompt": prompt, "prompt_id": str(i), "chosen": chosen, "rejected": rejected, "messages": chosen,
            "score_chosen": 9.0, "score_rejected": 4.0 + i}


def test_rm_on_ultrafeedback_folder(world_dir, tmp_path):
    import datasets

    rows = [row(i, "the tea is warm and sweet .", "the tea is cold and sour .") for i in range(8)]
    sft = [{"prompt": "p", "prompt_id": "x", "messages": rows[0]["chosen"]}]
    folder = tmp_path / "uf"
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows[:5]),
                          "test_prefs": datasets.Dataset.from_list(rows[5:]),
                          "train_sft": datasets.Dataset.from_list(sft)}).save_to_disk(str(folder))
    out = tmp_path / "out"
    summary = run_rm(RMConfig(model=world_dir["base"], data=str(folder), eval_data=str(folder), output_dir=str(out),
                              max_steps=1, batch_size=5, margin_from_scores=True))
    written = json.loads((out / "summary.json").read_text())
    assert (written["num_pairs"], written["eval_pairs"]) == (5, 3)
    assert (written["data_split"], written["eval_split"], written["bad_records"]) == ("train_prefs", "test_prefs", 0)
    assert summary["eval_pairs"] == 3
