from pathlib import Path

from transformers import AutoModelForSequenceClassification

from workers.distill.teacher import load_teacher
from workers.distill.trim_vocab import shrink_embeddings, trim_tokenizer


def test_trimmed_vocabulary_tokenises_seen_text_the_same(teacher_dir: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    teacher = load_teacher(str(teacher_dir), task="classification", train_labels=["neg", "pos"])
    tok = teacher.tokenizer
    text = "a clever, brutal movie."
    ids = tok(text)["input_ids"]
    trimmed, kept = trim_tokenizer(tok, set(ids))
    assert len(trimmed) == len(kept) < len(tok)
    assert trimmed.convert_ids_to_tokens(trimmed(text)["input_ids"]) == tok.convert_ids_to_tokens(
        ids
    )
    shrink_embeddings(model, kept)
    assert model.get_input_embeddings().weight.shape[0] == len(kept)
