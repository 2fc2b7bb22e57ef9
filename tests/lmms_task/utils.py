"""A small multiple-choice video task in lmms-eval's task format (tests/test_lmms_eval.py writes the YAML)."""


def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = "\n".join(f"{letter}. {option}" for letter, option in zip("ABCD", doc["options"]))
    return f"{doc['question']}\n{options}\nAnswer with the option's letter from the given choices directly."


def process_results(doc, results):
    answer = results[0].strip()[:1].upper()
    return {"accuracy": {"id": doc["id"], "prediction": results[0], "correct": float(answer == doc["answer"])}}


def aggregate(results):
    return 100.0 * sum(item["correct"] for item in results) / len(results)
