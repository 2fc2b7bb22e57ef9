"""The functions of the example task (videorope_tiny_mcq.yaml); `videorope-train make-lmms-example DIR` copies
this file into DIR, next to the videos and docs.jsonl it writes."""

from pathlib import Path

TASK_DIR = Path(__file__).resolve().parent  # the documents name their videos relative to it: DIR can move


def doc_to_visual(doc):
    return [str(TASK_DIR / doc["video"])]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = "\n".join(f"{letter}. {option}" for letter, option in zip("ABCD", doc["options"]))
    return f"{doc['question']}\n{options}\nAnswer with the option's letter from the given choices directly."


def process_results(doc, results):
    answer = results[0].strip()[:1].upper()
    return {"accuracy": {"id": doc["id"], "prediction": results[0], "correct": float(answer == doc["answer"])}}


def aggregate(results):
    return 100.0 * sum(item["correct"] for item in results) / len(results)
