import json
import os

import pytest
import torch
from transformers import AutoModel

from conftest import sentences
import recon  # noqa: F401  (registers every decoder class)
from recon.batching import pad_batch
from recon.decoder import DECODERS, Decoder, DecoderSpec
from recon.errors import ConfigError
from recon.decoding import beam_search, greedy, greedy_static
from recon.encoder import Encoder, EncoderError, EncoderSpec, load_encoder, pool
from recon.model import CheckpointError, ReconModel
from recon.tokenizer import EncoderVocabTokenizer, SentencePieceTokenizer


def test_encode_shapes_and_cls_is_the_first_hidden_state(tiny_model, tiny_encoder_dir):
    texts = sentences(5)
    v = tiny_model.encode(texts)
    assert v.shape == (5, 32)
    bert = AutoModel.from_pretrained(tiny_encoder_dir).eval()
    batch = tiny_model.encoder.tokenize(texts)
    with torch.no_grad():
        ref = bert(**batch).last_hidden_state[:, 0]
    torch.testing.assert_close(v, ref, rtol=1e-5, atol=1e-5)


def test_representations_differ_and_layer_selects_hidden_state(tiny_encoder_dir):
    model, tok = load_encoder(tiny_encoder_dir)
    texts = sentences(4)
    cls = Encoder(model, tok, "cls").eval().encode(texts)
    mean = Encoder(model, tok, "mean").eval().encode(texts)
    assert cls.shape == mean.shape and not torch.allclose(cls, mean)
    layer1 = Encoder(model, tok, "cls", layer=1).eval().encode(texts)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hs = model.eval()(**batch, output_hidden_states=True).hidden_states
    torch.testing.assert_close(layer1, hs[1][:, 0], rtol=1e-5, atol=1e-5)
    with pytest.raises(EncoderError, match="out of range"):
        Encoder(model, tok, "cls", layer=7)
    with pytest.raises(EncoderError, match="unknown representation"):
        Encoder(model, tok, "median")


def test_mean_and_max_ignore_padding():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").item() == 2.0
    assert pool(hidden, mask, "max").item() == 3.0


def test_cached_greedy_equals_full_recompute(tiny_model):
    """The KV cache changes nothing: step-by-step decoding with a full forward each step."""
    torch.manual_seed(1)
    vecs = torch.randn(3, 32)
    dec, c = tiny_model.decoder, tiny_model.config
    fast = greedy(dec, vecs, c.bos_id, c.eos_id, max_new_tokens=10)
    slow = []
    for v in vecs:
        ids = [c.bos_id]
        for _ in range(10):
            with torch.no_grad():
                nxt = dec(v[None], torch.tensor([ids]))[0, -1].argmax().item()
            if nxt == c.eos_id:
                break
            ids.append(nxt)
        slow.append(ids[1:])
    assert fast == slow


def test_finished_rows_leave_the_batch_without_changing_the_others():
    """Rows that end early (at different points, before and after the 8-token check) are dropped
    from the batch and cache; every row's output equals decoding it alone."""
    torch.manual_seed(2)
    dec = Decoder(DecoderSpec(d_model=32, n_layer=2, n_head=2, dropout=0.0, max_target_len=24), 32, 40).eval()
    with torch.no_grad():  # large weights and equal-norm token embeddings: varied outputs
        for p in dec.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.5)
        dec.tok_emb.weight.copy_(torch.nn.functional.normalize(dec.tok_emb.weight, dim=-1) * 5)
    vecs = torch.randn(16, 32)
    bos = 1
    free = greedy(dec, vecs, bos, -1, max_new_tokens=24)  # never ends: 24 tokens each
    # a token that ends rows at several different points serves as the end of text
    firsts = {}
    for row in free:
        for tok in row:
            firsts.setdefault(tok, set()).add(row.index(tok))
    stop = max(firsts, key=lambda tok: len(firsts[tok]))
    assert len(firsts[stop]) >= 3 and min(firsts[stop]) < 8 < max(firsts[stop])
    got = greedy(dec, vecs, bos, stop, max_new_tokens=24)
    assert got == [row[:row.index(stop)] if stop in row else row for row in free]
    assert got[:5] == greedy(dec, vecs[:5], bos, stop, max_new_tokens=24)
    # beam search: sentences whose beams have all ended leave the batch; each as if decoded alone
    best, beams = beam_search(dec, vecs, bos, stop, num_beams=3, max_new_tokens=24, return_all=True)
    assert len({len(x) for x in best}) >= 3  # they did end at different points
    for v, b, bs in zip(vecs, best, beams):
        alone, alone_beams = beam_search(dec, v[None], bos, stop, num_beams=3, max_new_tokens=24, return_all=True)
        assert [b] == alone
        assert [x for x, _ in bs] == [x for x, _ in alone_beams[0]]
        assert [s for _, s in bs] == pytest.approx([s for _, s in alone_beams[0]], abs=1e-4)


def test_output_depends_only_on_the_vector(tiny_model):
    """Same vector, different batch around it, same output (greedy and beam)."""
    torch.manual_seed(2)
    target = torch.randn(1, 32)
    alone = tiny_model.generate_from_vectors(target)
    crowd = tiny_model.generate_from_vectors(torch.cat([torch.randn(4, 32), target, torch.randn(2, 32)]))
    assert crowd[4] == alone[0]
    b_alone = tiny_model.generate_from_vectors(target, num_beams=3)
    b_crowd = tiny_model.generate_from_vectors(torch.cat([torch.randn(2, 32), target]), num_beams=3)
    assert b_crowd[2] == b_alone[0]


def test_beam_search_one_beam_is_greedy_and_beams_are_ranked(tiny_model):
    torch.manual_seed(3)
    vecs = torch.randn(4, 32)
    dec, c = tiny_model.decoder, tiny_model.config
    assert beam_search(dec, vecs, c.bos_id, c.eos_id, num_beams=1, max_new_tokens=8) == \
        greedy(dec, vecs, c.bos_id, c.eos_id, max_new_tokens=8)
    best, beams = beam_search(dec, vecs, c.bos_id, c.eos_id, num_beams=4, max_new_tokens=8, return_all=True)
    for b, row in zip(best, beams):
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True) and row[0][0] == b


def test_beam_scores_are_the_sequence_log_probabilities(tiny_model):
    """Each returned beam's score is its true log-probability / length (checked by re-scoring)."""
    torch.manual_seed(4)
    v = torch.randn(1, 32)
    dec, c = tiny_model.decoder, tiny_model.config
    _, beams = beam_search(dec, v, c.bos_id, c.eos_id, num_beams=3, max_new_tokens=6, return_all=True)
    for ids, score in beams[0]:
        full = ids + [c.eos_id] if len(ids) < 6 else ids
        with torch.no_grad():
            logp = dec(v, torch.tensor([[c.bos_id] + full[:-1]]))[0].log_softmax(-1)
        total = sum(logp[i, t].item() for i, t in enumerate(full))
        assert score == pytest.approx(total / len(full), abs=1e-4)


def test_sampling_draws_each_token_from_the_softmax_at_its_temperature(tiny_model):
    torch.manual_seed(5)
    v = torch.randn(1, 32)
    dec, c = tiny_model.decoder, tiny_model.config
    with torch.no_grad():
        probs = (dec(v, torch.tensor([[c.bos_id]]))[0, -1] / 0.5).softmax(-1)
    g = torch.Generator().manual_seed(0)
    first = [ids[0] if ids else c.eos_id for ids in
             greedy(dec, v.expand(4000, -1), c.bos_id, c.eos_id, max_new_tokens=1, temperature=0.5, generator=g)]
    seen = torch.bincount(torch.tensor(first), minlength=len(probs)).float() / len(first)
    top = probs.topk(5).indices
    assert (seen[top] - probs[top]).abs().max() < 0.03, (seen[top], probs[top])
    vecs = torch.randn(6, 32)
    assert tiny_model.generate_from_vectors(vecs, temperature=1e-4) == tiny_model.generate_from_vectors(vecs)
    a = tiny_model.generate_from_vectors(vecs, temperature=1.0, seed=1)
    assert a == tiny_model.generate_from_vectors(vecs, temperature=1.0, seed=1)
    assert a != tiny_model.generate_from_vectors(vecs, temperature=1.0, seed=2)
    for bad in (dict(temperature=1.0, num_beams=2), dict(temperature=-1.0)):
        with pytest.raises(ValueError, match="temperature must be 0"):
            tiny_model.generate_from_vectors(vecs, **bad)


def test_wrong_vector_width_is_refused(tiny_model):
    with pytest.raises(ValueError, match=r"\(N, 32\) vectors"):
        tiny_model.generate_from_vectors(torch.randn(2, 31))


def test_save_load_identical_logits_and_generations(tiny_model, tmp_path):
    torch.manual_seed(5)
    tiny_model.decoder.apply(lambda m: None)
    texts = sentences(4)
    vecs = tiny_model.encode(texts)
    y = torch.tensor([[5, 6, 7, tiny_model.config.eos_id]] * 4)
    tiny_model.save_pretrained(tmp_path / "ckpt")
    assert {"config.json", "model.safetensors", "decoder_tokenizer"} <= set(os.listdir(tmp_path / "ckpt"))
    loaded = ReconModel.from_pretrained(str(tmp_path / "ckpt"))
    with torch.no_grad():
        torch.testing.assert_close(loaded.decoder(vecs, y), tiny_model.decoder(vecs, y), rtol=0, atol=0)
    assert loaded.reconstruct(texts) == tiny_model.reconstruct(texts)
    assert loaded.generate_from_vectors(vecs, num_beams=3) == tiny_model.generate_from_vectors(vecs, num_beams=3)


def test_load_refuses_a_different_encoder_and_broken_files(tiny_model, tmp_path):
    folder = tmp_path / "ckpt"
    tiny_model.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["encoder_fingerprint"]["hidden_size"] = 768
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not the one this checkpoint was trained on"):
        ReconModel.from_pretrained(str(folder))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        ReconModel.from_pretrained(str(folder))
    with pytest.raises(CheckpointError, match="does not exist"):
        ReconModel.from_pretrained(str(tmp_path / "nowhere"))


def test_finetuned_encoder_is_saved_and_frozen_one_is_not(tiny_encoder_dir, tmp_path):
    from safetensors.torch import load_file
    model, tok = load_encoder(tiny_encoder_dir)
    enc = Encoder(model, tok)
    m = ReconModel.from_encoder(enc, EncoderVocabTokenizer(tok), EncoderSpec(tiny_encoder_dir, finetune_encoder=True),
                                DecoderSpec(d_model=32, n_layer=1, n_head=2))
    assert all(p.requires_grad for p in m.encoder.parameters())
    with torch.no_grad():
        for p in m.encoder.parameters():
            p.add_(0.01)
    m.save_pretrained(tmp_path / "ft")
    assert any(k.startswith("encoder.") for k in load_file(tmp_path / "ft" / "model.safetensors"))
    loaded = ReconModel.from_pretrained(str(tmp_path / "ft"))
    texts = sentences(3)
    torch.testing.assert_close(loaded.encode(texts), m.eval().encode(texts))
    frozen = ReconModel.from_encoder(Encoder(*load_encoder(tiny_encoder_dir)), EncoderVocabTokenizer(tok),
                                     EncoderSpec(tiny_encoder_dir), DecoderSpec(d_model=32, n_layer=1, n_head=2))
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    frozen.save_pretrained(tmp_path / "fr")
    assert not any(k.startswith("encoder.") for k in load_file(tmp_path / "fr" / "model.safetensors"))


def test_sentencepiece_round_trips_raw_text():
    texts = sentences(200) + ["Café au lait in Zürich costs 4.50 CHF — naïve façade."]
    tok = SentencePieceTokenizer.train(texts, vocab_size=400)
    for t in texts[-3:]:
        ids = tok.encode([t])[0]
        assert tok.decode(ids) == t and tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.decode(tok.encode(["漢字 unseen characters ✓"])[0]) == "漢字 unseen characters ✓"  # byte fallback


def test_decoder_overfits_a_handful_of_sentences(tiny_model):
    """The decoder can learn to write each of 8 sentences back from its vector alone."""
    texts = sentences(8)
    vecs = tiny_model.encode(texts)
    tiny_model.decoder.set_vector_stats(vecs)
    tok = tiny_model.tokenizer
    targets = [ids + [tok.eos_id] for ids in tok.encode(texts)]
    T = max(map(len, targets))
    y = torch.tensor([t + [tok.pad_id] * (T - len(t)) for t in targets])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(tiny_model.decoder.parameters(), lr=3e-3)
    tiny_model.train()
    for _ in range(300):
        loss = tiny_model.loss(vecs, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert tiny_model.reconstruct(texts) == [t.lower() for t in texts]  # uncased encoder vocabulary


def random_decoder(seed, **spec):
    """A 2-layer decoder (vectors of 16, a vocabulary of 40) with large random weights, drawn after
    torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    dec = Decoder(DecoderSpec(d_model=32, n_layer=2, n_head=2, dropout=0.0, max_target_len=12, **spec), 16, 40).eval()
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.3)
    return dec


@pytest.mark.parametrize("condition,bow_prior,coverage,used_up", [
    ("prefix+add", False, False, False), ("prefix+add-zero", False, False, False), ("prefix", True, False, False),
    ("prefix+add", True, True, False), ("prefix", True, True, True)])
def test_what_the_vector_adds_at_every_position_survives_the_cache_and_the_beams(condition, bow_prior, coverage,
                                                                                 used_up):
    """--condition prefix+add, --bow-prior, --coverage and --prior-used-up: cached greedy equals a full
    forward per step, and beam search over a batch (rows leaving it, beams reordered) equals each
    sentence alone."""
    torch.manual_seed(6)
    dec = Decoder(DecoderSpec(d_model=32, n_layer=2, n_head=2, dropout=0.0, max_target_len=12, condition=condition,
                              bow_prior=bow_prior, coverage=coverage, prior_used_up=used_up), 16, 40).eval()
    assert dec.add is None or (dec.add.weight == 0).all() == (condition == "prefix+add-zero")
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.3)
    vecs = torch.randn(5, 16)
    fast = greedy(dec, vecs, 2, 3, max_new_tokens=12)
    slow = []
    for v in vecs:
        ids = [2]
        for _ in range(12):
            with torch.no_grad():
                nxt = dec(v[None], torch.tensor([ids]))[0, -1].argmax().item()
            if nxt == 3:
                break
            ids.append(nxt)
        slow.append(ids[1:])
    assert fast == slow
    alone = [beam_search(dec, vecs[i:i + 1], 2, 3, 3, max_new_tokens=12)[0] for i in range(5)]
    best, beams = beam_search(dec, vecs, 2, 3, 3, max_new_tokens=12, return_all=True)
    assert best == alone
    for v, row in zip(vecs, beams):  # each beam's score is its log-probability by a full forward, no cache
        for ids, score in row:
            full = ids + [3] if len(ids) < 12 else ids
            with torch.no_grad():
                logp = dec(v[None], torch.tensor([[2] + full[:-1]]))[0].log_softmax(-1)
            assert score == pytest.approx(sum(logp[i, t].item() for i, t in enumerate(full)) / len(full), abs=1e-4)


@pytest.mark.parametrize("valid", [False, True])
def test_beam_search_leaving_out_finished_beams_writes_the_same_beams(monkeypatch, valid):
    """On a CPU finished beams leave the decoder's batch and its cache at once; on CUDA every beam stays
    until its sentence's last has ended, checked every 8 tokens. Forced here to the CUDA way on the CPU,
    both write the same beams with the same scores, beams ending at many lengths."""
    import recon.decoding as decoding
    from recon.decoding import ValidText
    dec = random_decoder(12, bow_prior=True, coverage=True, prior_used_up=True)
    with torch.no_grad():
        dec.tok_emb.weight[3] *= 3  # [EOS] likelier: beams end at many lengths
    vecs = torch.randn(24, 16)
    gen = dict(max_new_tokens=12, return_all=True, no_repeat_ngram=2,
               valid=ValidText([-1] * 20 + [0x41, 0xC3, 0xA9] + [-1] * 17, [0, 1, 2], "cpu") if valid else None)
    asked, forward = [], Decoder.forward

    def recording(self, vectors=None, input_ids=None, cache=None):
        asked.append(len(input_ids))
        return forward(self, vectors, input_ids, cache)

    monkeypatch.setattr(Decoder, "forward", recording)
    best, beams = beam_search(dec, vecs, 2, 3, 4, **gen)
    assert any(n % 4 for n in asked)  # finished beams left the batch, not only ended sentences
    monkeypatch.setattr(decoding, "_exit_every", lambda device: 8)
    best_all, beams_all = beam_search(dec, vecs, 2, 3, 4, **gen)
    assert best == best_all
    assert len({len(ids) for row in beams for ids, _ in row}) > 3
    for row, row_all in zip(beams, beams_all):
        assert [ids for ids, _ in row] == [ids for ids, _ in row_all]
        assert [s for _, s in row] == pytest.approx([s for _, s in row_all], abs=1e-5)


def test_cached_calls_match_a_full_forward_when_tokens_repeat():
    """The used-up prior and coverage read a cache's earlier inputs (its "history"): fed in calls of one
    token and of several, with tokens written two and three times, the cached logits are a full
    forward's, and the inputs follow their rows through reorder (beams of one sentence) and select."""
    dec = random_decoder(11, bow_prior=True, coverage=True, prior_used_up=True)
    vecs = torch.randn(1, 16).expand(3, -1)  # three beams of one sentence: reorder moves rows among them
    ids = torch.tensor([[2, 7, 7, 9, 7, 5, 9, 11], [2, 5, 6, 5, 5, 8, 8, 8], [2, 9, 9, 9, 4, 7, 7, 6]])
    with torch.no_grad():
        full = dec(vecs, ids)
        cache = dec.new_cache(3, torch.device("cpu"), torch.float32)
        parts = [dec(vecs, ids[:, :1], cache)] + [dec(None, ids[:, t:t + 1], cache) for t in range(1, 4)]
        parts.append(dec(None, ids[:, 4:6], cache))  # two positions in one call
        cache.reorder(torch.tensor([2, 0, 1]))  # each row now continues another's inputs
        moved = dec(None, ids[[2, 0, 1], 6:7], cache)
        cache.select(torch.tensor([0, 2]))  # the second row leaves
        kept = dec(None, ids[[2, 1], 7:8], cache)
    torch.testing.assert_close(torch.cat(parts, 1), full[:, :6], rtol=0, atol=1e-5)
    torch.testing.assert_close(moved[:, 0], full[[2, 0, 1], 6], rtol=0, atol=1e-5)
    torch.testing.assert_close(kept[:, 0], full[[2, 1], 7], rtol=0, atol=1e-5)


def test_kv_cache_moves_the_filled_positions_of_the_chosen_rows():
    from recon.decoder import KVCache
    torch.manual_seed(12)
    cache = KVCache(2, 6, 2, 8, 4, torch.device("cpu"), torch.float32)
    cache.k.normal_(), cache.v.normal_()
    cache.pos = 3
    k, v = cache.k.clone(), cache.v.clone()
    cache.select(torch.tensor([0, 2, 5]))
    cache.reorder(torch.tensor([2, 2, 0]))  # rows 5, 5, 0 of the start
    assert cache.k.shape == (2, 3, 2, 8, 4)
    torch.testing.assert_close(cache.k[:, :, :, :3], k[:, [5, 5, 0], :, :3], rtol=0, atol=0)
    torch.testing.assert_close(cache.v[:, :, :, :3], v[:, [5, 5, 0], :, :3], rtol=0, atol=0)
    cache.select(torch.tensor([1]))
    torch.testing.assert_close(cache.k[:, :, :, :3], k[:, [5], :, :3], rtol=0, atol=0)


def test_the_bag_of_words_prior_starts_as_the_heads_log_probabilities():
    """--bow-prior: an untrained decoder's logits are its language model's plus the bag-of-words
    head's log-probabilities (gate 1 everywhere); with the gate at 0 they are the language model's."""
    torch.manual_seed(8)
    dec = Decoder(DecoderSpec(d_model=32, n_layer=1, n_head=2, dropout=0.0, bow_prior=True, prior_used_up=False),
                  16, 40).eval()  # the prior alone; test_a_used_up_prior_... takes it back
    v, ids = torch.randn(3, 16), torch.randint(4, 40, (3, 5))
    with torch.no_grad():
        with_prior = dec(v, ids)
        dec.prior_gate.bias.zero_()
        without = dec(v, ids)
    prior = dec.bow_logprobs(dec.standardize(v))  # (B, V)
    torch.testing.assert_close(with_prior, without + prior[:, None])
    assert (with_prior.argmax(-1) != without.argmax(-1)).any()


def test_a_used_up_prior_takes_back_a_written_tokens_boost_once():
    """--prior-used-up: from the position that has read a token on, its logit has the vocabulary's
    lowest prior in place of its own (at the starting share 1 and gate 1), however often written;
    other tokens keep their boost, and a decoder that cannot use it up is refused."""
    torch.manual_seed(9)
    dec = Decoder(DecoderSpec(d_model=32, n_layer=1, n_head=2, dropout=0.0, coverage=False, prior_used_up=True),
                  16, 40).eval()
    v, ids = torch.randn(1, 16), torch.tensor([[2, 7, 7, 9]])
    with torch.no_grad():
        used = dec(v, ids)
        dec.prior_used.zero_()
        kept = dec(v, ids)
    prior = dec.bow_logprobs(dec.standardize(v))[0]
    boost = prior - prior.min()
    want = kept.clone()
    for t, written in enumerate([{2}, {2, 7}, {2, 7}, {2, 7, 9}]):
        for tok in written:
            want[0, t, tok] -= boost[tok]
    torch.testing.assert_close(used, want)
    assert (used != kept).sum() == 1 + 2 + 2 + 3
    with pytest.raises(ConfigError, match="--prior-used-up"):
        DecoderSpec(bow_prior=False, prior_used_up=True)
    assert DecoderSpec().prior_used_up  # the default; without the prior it must be turned off by name
    with pytest.raises(ConfigError, match="also give --prior-used-up false"):
        DecoderSpec(bow_prior=False)
    assert not DecoderSpec(bow_prior=False, prior_used_up=False).bow_prior


def test_coverage_penalises_each_token_by_the_times_it_was_written():
    torch.manual_seed(9)
    dec = Decoder(DecoderSpec(d_model=32, n_layer=1, n_head=2, dropout=0.0, coverage=True), 16, 40).eval()
    v, ids = torch.randn(1, 16), torch.tensor([[2, 7, 7, 9]])
    with torch.no_grad():
        plain = dec(v, ids)
        dec.coverage[7], dec.coverage[9] = 1.5, -0.5
        penalised = dec(v, ids)
    want = plain.clone()
    want[0, 1:, 7] -= 1.5 * torch.tensor([1, 2, 2])  # 7 written once by position 1, twice by 2 and 3
    want[0, 3, 9] += 0.5
    torch.testing.assert_close(penalised, want)


def test_the_bag_of_words_loss_is_the_targets_negative_log_likelihood():
    torch.manual_seed(7)
    dec = Decoder(DecoderSpec(d_model=32, n_layer=1, n_head=2, bow_weight=1.0, bow_head="tied"), 16, 40)
    v, y = torch.randn(2, 16), torch.tensor([[5, 6, 6, 3], [7, 3, 0, 0]])
    logp = torch.nn.functional.linear(dec.bow(dec.standardize(v)), dec.tok_emb.weight).log_softmax(-1)
    want = -(logp[0, 5] + 2 * logp[0, 6] + logp[0, 3] + logp[1, 7] + logp[1, 3])
    torch.testing.assert_close(dec.bow_loss(v, y, ignore_id=0), want)


def test_a_full_bag_of_words_head_has_its_own_weight_for_every_token():
    """--bow-head full: the head maps the vector straight to the vocabulary (full rank), without
    the token embeddings; the prior and the loss read it the same way as a tied head."""
    torch.manual_seed(10)
    dec = Decoder(DecoderSpec(d_model=32, n_layer=1, n_head=2, dropout=0.0, bow_head="full"), 16, 40).eval()
    assert dec.bow.weight.shape == (40, 16) and dec.bow_parameters() == list(dec.bow.parameters())
    v, y = torch.randn(2, 16), torch.tensor([[5, 6, 3], [7, 3, 0]])
    logp = dec.bow(dec.standardize(v)).log_softmax(-1)
    torch.testing.assert_close(dec.bow_logprobs(dec.standardize(v)), logp)
    torch.testing.assert_close(dec.bow_loss(v, y, ignore_id=0), -(logp[0, 5] + logp[0, 6] + logp[0, 3] + logp[1, 7] + logp[1, 3]))
    with torch.no_grad():
        dec.tok_emb.weight.normal_()  # the embeddings are not part of a full head
    torch.testing.assert_close(dec.bow_logprobs(dec.standardize(v)), logp)
    with pytest.raises(ValueError, match="--bow-head must be tied or full"):
        DecoderSpec(bow_head="wide")


@pytest.mark.parametrize("bow_head", ["tied", "full"])
def test_fitting_the_bag_of_words_head_alone_raises_its_recall_and_touches_nothing_else(bow_head):
    """--bow-epochs: the head learns which tokens each vector's sentence holds (recall at |s| on
    held-out vectors of the same rule rises well above a random head's), every other weight stays."""
    from types import SimpleNamespace
    from recon.training import fit_bow_head
    torch.manual_seed(11)
    V, Dv = 60, 24
    dec = Decoder(DecoderSpec(d_model=32, n_layer=1, n_head=2, bow_head=bow_head), Dv, V)
    # each sentence: 4 of 50 content tokens; its vector: the sum of their random directions
    directions = torch.randn(V, Dv)
    targets = [torch.randperm(50)[:4].add(5).tolist() + [3] for _ in range(1200)]
    vectors = torch.stack([directions[t[:4]].sum(0) for t in targets]) + 0.1 * torch.randn(len(targets), Dv)
    dec.set_vector_stats(vectors[:1000])
    model = SimpleNamespace(decoder=dec, config=SimpleNamespace(pad_id=0))
    others = {k: v.clone() for k, v in dec.state_dict().items() if not k.startswith("bow.")}
    cfg = SimpleNamespace(bow_epochs=30, lr=1e-2, seed=0)
    fit = fit_bow_head(model, vectors[:1000], targets[:1000], cfg, log=lambda *a: None,
                       val=(vectors[1000:], targets[1000:]))
    assert fit["recall_before"] < 0.3 and fit["recall_after"] > {"tied": 0.4, "full": 0.8}[bow_head], fit
    for k, v in dec.state_dict().items():
        if not k.startswith("bow."):
            assert torch.equal(v, others[k]), k
    assert all(p.grad is None for p in dec.parameters())  # nothing left for the first training step


@pytest.fixture
def encoder_and_pieces(tiny_encoder_dir):
    from recon.encoder import load_encoder
    model, tok = load_encoder(tiny_encoder_dir)
    return Encoder(model, tok, "cls", -1, max_length=16), SentencePieceTokenizer.train(sentences(200), vocab_size=300)


def test_encoder_rows_are_the_mean_embeddings_of_each_pieces_word_pieces(encoder_and_pieces):
    from recon.prepare import encoder_rows
    encoder, spm_tok = encoder_and_pieces
    rows, emb = encoder_rows(spm_tok, encoder), encoder.model.get_input_embeddings().weight
    texts = spm_tok.piece_texts()
    assert texts[spm_tok.pad_id] is None and rows[spm_tok.pad_id].isnan().all()
    dot = texts.index(".")
    torch.testing.assert_close(rows[dot], emb[encoder.tokenizer.convert_tokens_to_ids(".")].detach())
    assert (~rows.isnan().any(1)).sum() > 20
    own = EncoderVocabTokenizer(encoder.tokenizer)  # the encoder's vocabulary: its own rows
    rows = encoder_rows(own, encoder)
    fox = encoder.tokenizer.convert_tokens_to_ids("fox")
    torch.testing.assert_close(rows[fox], emb[fox].detach())
    assert rows[own.pad_id].isnan().all()


def test_token_embeddings_keep_the_geometry_of_the_encoder_rows():
    torch.manual_seed(12)
    dec = Decoder(DecoderSpec(d_model=32, n_layer=1, n_head=2, embedding_init="encoder"), 16, 50)
    rows = torch.randn(50, 16)
    rows[:5] = float("nan")
    start = dec.tok_emb.weight[:5].clone()
    assert dec.init_token_embeddings(rows) == 45
    e = dec.tok_emb.weight.detach()
    assert torch.equal(e[:5], start)
    x = rows[5:] - rows[5:].mean(0)
    gram_rows, gram_emb = x @ x.T, e[5:] @ e[5:].T
    torch.testing.assert_close(gram_emb / gram_emb.norm(), gram_rows / gram_rows.norm(), atol=1e-5, rtol=1e-4)
    assert float(e[5:].std()) == pytest.approx(0.02, rel=1e-3)
    with pytest.raises(ValueError, match="--embedding-init"):
        DecoderSpec(embedding_init="glove")


def test_word_dropout_blanks_training_inputs_after_bos_and_nothing_else():
    """--word-dropout p: in training, each input token after [BOS] is a zero embedding with
    probability p; [BOS] never is, and evaluation, validation and generation see every token."""
    torch.manual_seed(11)
    dec = Decoder(DecoderSpec(d_model=32, n_layer=1, n_head=2, dropout=0.0, word_dropout=0.4), 16, 40)
    v, ids = torch.randn(64, 16), torch.randint(4, 40, (64, 20))
    emb = dec.embed_tokens(ids)  # training mode
    blank = (emb == 0).all(-1)
    assert not blank[:, 0].any()
    assert 0.35 < blank[:, 1:].float().mean() < 0.45
    torch.testing.assert_close(emb[~blank], dec.tok_emb(ids)[~blank])
    dec.eval()
    torch.testing.assert_close(dec.embed_tokens(ids), dec.tok_emb(ids))
    with torch.no_grad():
        evaluated = dec(v, ids)
        dec.word_dropout = 0.0
        torch.testing.assert_close(evaluated, dec(v, ids))
        dec.word_dropout = 0.4
        dec.train()
        trained = dec(v, ids)
    torch.testing.assert_close(trained[:, 0], evaluated[:, 0])  # position 0 reads the prefix and [BOS] only
    assert not torch.allclose(trained[:, 1:], evaluated[:, 1:])


@pytest.mark.parametrize("decoder_type", ["transformer", "corrector"])
def test_vector_noise_moves_the_vector_in_training_only(decoder_type):
    torch.manual_seed(12)
    spec = DecoderSpec(decoder_type=decoder_type, d_model=32, n_layer=1, n_head=2, dropout=0.0, vector_noise=0.5,
                       max_target_len=8)
    dec = DECODERS[decoder_type](spec, 16, 40)
    v, ids = torch.randn(4, 16), torch.randint(4, 40, (4, 6))
    if decoder_type == "corrector":  # its row: the target vector, a hypothesis's vector and ids
        v = dec.rows(v, torch.randn(4, 16), [[5, 6], [7], [8, 9, 10], [11]])
    with torch.no_grad():
        noisy_a, noisy_b = dec(v, ids), dec(v, ids)  # training mode: a new draw each time
        dec.eval()
        clean = dec(v, ids)
        dec.vector_noise = 0.0
        torch.testing.assert_close(clean, dec(v, ids))
    assert not torch.allclose(noisy_a, noisy_b) and not torch.allclose(noisy_a, clean)


def vectors_and_targets(model, texts):
    """The texts' vectors (B, Dv) and their decoder targets (B, T): [EOS]-ended, padded as training pads them."""
    tok = model.tokenizer
    return model.encode(texts), pad_batch([ids + [tok.eos_id] for ids in tok.encode(texts)], tok.pad_id,
                                          torch.device("cpu"))


def test_label_smoothing_changes_the_training_loss_and_not_the_validation_loss(tiny_model):
    """The smoothed training loss is (1 - e) * NLL + e * the mean over the vocabulary of -log p, summed
    over real tokens; `loss` (validation) never smooths."""
    from recon.training import TrainStep
    tok = tiny_model.tokenizer
    vecs, y = vectors_and_targets(tiny_model, sentences(3))
    tiny_model.eval()
    with torch.no_grad():
        plain, smooth = TrainStep(tiny_model)(y, vecs), TrainStep(tiny_model, 0.2)(y, vecs)
        bos = torch.full((3, 1), tiny_model.config.bos_id)
        logp = tiny_model.decoder(vecs, torch.cat([bos, y[:, :-1]], 1)).float().log_softmax(-1)  # (B, T, V)
        real = y != tok.pad_id
        nll = -logp.gather(-1, y[..., None]).squeeze(-1)[real].sum()
        uniform = -logp.mean(-1)[real].sum()
        bow = smooth - (0.8 * nll + 0.2 * uniform)  # the bag-of-words term, the same in both
        torch.testing.assert_close(plain - nll, bow, rtol=1e-4, atol=1e-3)
        assert abs(smooth.item() - plain.item()) > 1e-2
        torch.testing.assert_close(tiny_model.loss(vecs, y), nll / real.sum())


def test_scheduled_sampling_feeds_the_decoders_own_guesses(tiny_model):
    """At rate 1 every input token after [BOS] at a real position is the teacher-forced pass's
    argmax for the token before it, padding and [BOS] untouched; at rate 0 the inputs are the
    teacher's; the training loss is the loss on those inputs."""
    from recon.training import TrainStep
    tok = tiny_model.tokenizer
    vecs, y = vectors_and_targets(tiny_model, sentences(3))
    teacher = tiny_model.teacher_inputs(y)
    assert (teacher[:, 0] == tiny_model.config.bos_id).all() and (teacher[:, 1:] == y[:, :-1]).all()
    with torch.no_grad():
        guess = tiny_model.decoder(vecs, teacher).argmax(-1)  # (B, T)
        assert torch.equal(tiny_model.sampled_inputs(vecs, y, 0.0), teacher)
        sampled = tiny_model.sampled_inputs(vecs, y, torch.tensor(1.0))
        real = y[:, :-1] != tok.pad_id
        assert (sampled[:, 0] == tiny_model.config.bos_id).all()
        assert torch.equal(sampled[:, 1:][real], guess[:, :-1][real])
        assert torch.equal(sampled[:, 1:][~real], teacher[:, 1:][~real])
        assert not torch.equal(sampled, teacher)  # an untrained decoder guesses wrong
        step = TrainStep(tiny_model)
        bow = tiny_model.decoder.bow_weight * tiny_model.decoder.bow_loss(vecs, y, tok.pad_id)
        torch.testing.assert_close(step(y, vecs, sample_rate=torch.tensor(1.0)),
                                   tiny_model.loss(vecs, y, reduction="sum", inputs=sampled) + bow)
        assert abs(step(y, vecs, sample_rate=torch.tensor(1.0)).item() - step(y, vecs).item()) > 1e-2


def test_scheduled_sampling_rate_rises_from_zero_to_the_flag(tiny_model):
    """Each step's batch carries the rate: 0 at the first step, --scheduled-sampling at the last,
    linear between; without the flag no rate is passed (teacher forcing)."""
    from types import SimpleNamespace
    from recon.batching import Batches
    from recon.config import TrainConfig
    from recon.training import step_batches
    tok = tiny_model.tokenizer
    targets = [ids + [tok.eos_id] for ids in tok.encode(sentences(8))]
    run = SimpleNamespace(model=tiny_model, device=torch.device("cpu"), targets={"train": targets},
                          vectors={"train": torch.randn(8, tiny_model.config.vector_dim)})
    batches = Batches([len(t) for t in targets], 4, 0)
    ramp = step_batches(run, batches, TrainConfig(scheduled_sampling=0.4), 11)
    rates = [ramp(s).inputs["sample_rate"].item() for s in (0, 5, 10)]
    assert rates == pytest.approx([0.0, 0.2, 0.4])
    assert "sample_rate" not in step_batches(run, batches, TrainConfig(), 11)(5).inputs
    with pytest.raises(ConfigError, match="--scheduled-sampling"):
        TrainConfig(scheduled_sampling=1.5)


@pytest.mark.parametrize("condition,used_up", [("prefix", False), ("prefix+add", False), ("prefix", True)])
def test_static_greedy_writes_greedys_tokens(condition, used_up):
    """greedy_static (fixed shapes, the CUDA-graph path without the graph here) writes what greedy
    writes, with the prior, coverage and the added condition, rows ending at different points,
    and at the full length (its last token chosen outside the step)."""
    torch.manual_seed(3)
    spec = DecoderSpec(d_model=32, n_layer=2, n_head=2, dropout=0.0, max_target_len=20, num_prefix=2,
                       condition=condition, bow_weight=0.5, bow_prior=True, coverage=True, prior_used_up=used_up)
    dec = Decoder(spec, 32, 40).eval()
    with torch.no_grad():
        for p in dec.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.5)
        dec.coverage.normal_(0, 1.0)  # trained coverage is not zero: make it matter here
        dec.tok_emb.weight.copy_(torch.nn.functional.normalize(dec.tok_emb.weight, dim=-1) * 5)
    vecs, bos = torch.randn(16, 32), 1
    free = greedy(dec, vecs, bos, -1, max_new_tokens=21)  # the decoder's longest: 21 tokens each, [EOS]'s place
    assert {len(x) for x in free} == {21}
    assert greedy_static(dec, vecs, bos, -1, max_new_tokens=21, cuda_graph=False) == free
    assert greedy_static(dec, vecs, bos, -1, cuda_graph=False) == greedy(dec, vecs, bos, -1)  # 20 by default
    firsts = {}
    for row in free:
        for tok in row:
            firsts.setdefault(tok, set()).add(row.index(tok))
    stop = max(firsts, key=lambda tok: len(firsts[tok]))
    assert len(firsts[stop]) >= 3
    got = greedy_static(dec, vecs, bos, stop, max_new_tokens=16, cuda_graph=False)
    assert got == greedy(dec, vecs, bos, stop, max_new_tokens=16) and len({len(x) for x in got}) >= 3
    # the buffers of a shape are kept and refilled: another batch of that shape, then the first again
    other = torch.randn(16, 32) * 2
    assert greedy_static(dec, other, bos, stop, max_new_tokens=16, cuda_graph=False) == \
        greedy(dec, other, bos, stop, max_new_tokens=16)
    assert greedy_static(dec, vecs, bos, stop, max_new_tokens=16, cuda_graph=False) == got
    assert len(dec._static_plans) == 3  # (16, 21, -1), (16, 20, -1), (16, 16, stop)
    import copy
    import pickle
    assert not copy.deepcopy(dec)._static_plans and not pickle.loads(pickle.dumps(dec))._static_plans


def test_static_greedy_refuses_what_it_does_not_decode(tiny_encoder_dir):
    from recon.decoding import can_decode_static
    dec = Decoder(DecoderSpec(d_model=32, n_layer=1, n_head=2, max_target_len=8), 32, 40).eval()
    with pytest.raises(ValueError, match="needs a CUDA device"):
        greedy_static(dec, torch.randn(2, 32), 1, 2, cuda_graph=True)
    other = DECODERS["corrector"](DecoderSpec(d_model=32, n_layer=1, n_head=2, max_target_len=8,
                                              decoder_type="corrector"), 32, 40)
    assert can_decode_static(dec) and not can_decode_static(other)
    with pytest.raises(ValueError, match="use greedy"):
        greedy_static(other, torch.randn(2, 32), 1, 2)
