"""Decoding writes only valid text: no half characters from byte-fallback pieces (U+FFFD), no
special pieces, whatever the decoder's weights."""

import pytest
import torch

from conftest import sentences
from recon.decoder import Decoder, DecoderSpec
from recon.decoding import ValidText, ban_repeats_, beam_search, canonical_pieces, greedy, greedy_static
from recon.tokenizer import SentencePieceTokenizer


@pytest.fixture(scope="module")
def byte_heavy():
    """A SentencePiece vocabulary where most pieces are bytes, and an untrained decoder that
    writes them often."""
    texts = sentences(300) + ["Zürich, Kraków, Ærøskøbing, 東京, ☃ and 🙂."] * 3
    tok = SentencePieceTokenizer.train(texts, vocab_size=400)
    torch.manual_seed(0)
    dec = Decoder(DecoderSpec(d_model=32, n_layer=1, n_head=2, dropout=0.0, max_target_len=24,
                              prior_used_up=False), 16, tok.vocab_size).eval()
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.5)
    return tok, dec


def raw_bytes(tok, ids):
    """The text's bytes: normal pieces as UTF-8, byte pieces as their byte."""
    values = tok.byte_values()
    return b"".join(bytes([values[i]]) if values[i] >= 0 else tok.sp.id_to_piece(i).replace("▁", " ").encode()
                    for i in ids)


@pytest.mark.parametrize("beams", [1, 3])
def test_every_output_is_valid_utf8_without_special_pieces(byte_heavy, beams):
    tok, dec = byte_heavy
    assert sum(v >= 0 for v in tok.byte_values()) == 256
    valid = ValidText.for_tokenizer(tok, torch.device("cpu"))
    vectors = torch.randn(64, 16) * 3
    run = (lambda v, **k: greedy(dec, v, tok.bos_id, tok.eos_id, 24, **k)) if beams == 1 else \
        (lambda v, **k: beam_search(dec, v, tok.bos_id, tok.eos_id, beams, max_new_tokens=24, **k))
    free = run(vectors)
    assert any("\ufffd" in tok.decode(ids) for ids in free)  # unconstrained, this decoder writes half characters
    for ids in run(vectors, valid=valid):
        text = raw_bytes(tok, ids).decode("utf-8")  # strict: raises on any invalid or unfinished sequence
        assert "\ufffd" not in tok.decode(ids) and not any(c < " " or c == "\x7f" for c in text)
        assert not set(ids) & {tok.pad_id, tok.bos_id, tok.sp.unk_id()}
    if beams == 1:  # the fixed-shape greedy (the CUDA-graph path) holds the same constraint, token for token
        assert greedy_static(dec, vectors, tok.bos_id, tok.eos_id, 24, valid=valid, cuda_graph=False) == \
            run(vectors, valid=valid)


def test_the_constraint_changes_nothing_where_the_output_is_already_valid(byte_heavy):
    tok, dec = byte_heavy
    valid = ValidText.for_tokenizer(tok, torch.device("cpu"))

    def ok(ids):
        try:
            text = raw_bytes(tok, ids).decode("utf-8")
        except UnicodeDecodeError:
            return False
        return not any(c < " " or c == "\x7f" for c in text) and not set(ids) & {tok.pad_id, tok.bos_id, tok.sp.unk_id()}
    vectors = torch.randn(256, 16) * 3
    free, kept = greedy(dec, vectors, tok.bos_id, tok.eos_id, 24), greedy(dec, vectors, tok.bos_id, tok.eos_id, 24, valid=valid)
    same = [a == b for a, b in zip(free, kept) if ok(a)]
    assert same and all(same)


def test_loose_repeat_ban_ignores_case_and_punctuation():
    texts = ["the", "Sea", "sea", ",", "and", "blue", None]  # None: a byte or special piece
    canon = canonical_pieces(texts)
    assert canon[1] == canon[2] and canon[3] == canon[6] == -1 and len(set(canon[[0, 1, 4, 5]].tolist())) == 4
    # row 0: "the Sea and , the sea" -> the sea and the sea: "the sea" came before, followed by "and"
    # row 1: "the , Sea , , the"    -> the sea the: "the" came before, followed by "sea"
    history = torch.tensor([[0, 1, 4, 3, 0, 2], [0, 3, 1, 3, 3, 0]])
    logits = torch.zeros(2, 7)
    ban_repeats_(logits, history, 3, canon)
    assert torch.isinf(logits[0]).nonzero().flatten().tolist() == [4]  # "and" again would repeat a 3-gram
    assert not torch.isinf(logits[1]).any()  # "the sea" then "sea": no 3-gram complete yet
    logits = torch.zeros(2, 7)
    ban_repeats_(logits, history, 2, canon)
    assert torch.isinf(logits[1]).nonzero().flatten().tolist() == [1, 2]  # both cases of "sea"; never ","
    exact = torch.zeros(2, 7)
    ban_repeats_(exact, history, 3)  # on token ids: "the sea" (0, 2) is not "the Sea" (0, 1)
    assert not torch.isinf(exact).any()
