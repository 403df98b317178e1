import torch
from transformers import BertConfig, BertModel

from workers.distill import losses as L
from workers.distill.capture import QKVCapture


def _padded_batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(5, 60, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_captured_scores_equal_eager_attentions_pre_softmax() -> None:
    config = BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = BertModel(config).eval()
    model.set_attn_implementation("eager")
    batch = _padded_batch()
    capture = QKVCapture(model, [0, 1], values=False)
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    mask = batch["attention_mask"]
    for layer in (0, 1):
        scores = L.attention_scores(capture.get(layer, "query"), capture.get(layer, "key"), 4)
        masked = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
        torch.testing.assert_close(masked.softmax(-1), out.attentions[layer])
    # the same hooks under SDPA (which returns no weights) see the same projections
    model.set_attn_implementation("sdpa")
    eager_q = capture.get(1, "query").clone()
    with torch.no_grad():
        model(**batch)
    torch.testing.assert_close(capture.get(1, "query"), eager_q)
    capture.close()
