"""recon against the Hugging Face baseline a user would write, in one process, same data and size.

Baseline: a transformers GPT-2 decoder of recon's decoder size with cross-attention to the
sentence vector (projected to the decoder width), trained the plain way: shuffled batches, the
frozen encoder run on every batch, then GPT-2 with `labels=`; generation with `generate()`.
recon: vectors computed once (the cache), length-bucketed batches, recon's training step
(optionally torch.compile'd), its KV-cache greedy/beam decoding.

    python benchmarks/benchmark.py                    # CPU, about 2 minutes on 2 cores
    python benchmarks/benchmark.py --device cuda --sentences 20000 --batch-size 256 --d-model 512 --n-layer 8 --n-head 8 --compile

Prints a Markdown table (and writes it with the raw figures to --output as JSON). Both models
are untrained, so generation runs to the maximum length for both; the table shows the tokens
each generated so the work compared is the same.
"""

import argparse
import json
import resource
import time

import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel

from recon.batching import Batches, pad_batch
from recon.checkpoint import load_meta, resolve_checkpoint
from recon.data import DataConfig
from recon.decoder import DecoderSpec
from recon.decoding import beam_search, greedy, greedy_static
from recon.device import autocast, keep_freed_memory
from recon.encoder import EncoderSpec
from recon.model import ReconModel
from recon.speed import padding_fraction, peak_flops, transformer_flops_per_token
from recon.tokenizer import SentencePieceTokenizer
from recon.training import TrainStep


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def validation_decoding(checkpoint, sentences, device=None):
    """For the generation benchmarks: a trained checkpoint, the vectors of the first `sentences` texts of
    its run's validation split, and the decodings its run evaluated with (greedy and its beam search,
    without the rerank), as decode_rows' arguments: (folder, model, texts, vectors, {name: kwargs})."""
    folder = resolve_checkpoint(checkpoint)
    model = ReconModel.from_pretrained(folder, device=device)
    run_args = load_meta(folder).get("args", {})
    texts = model.training_corpus().texts("validation")[:sentences]
    beams, no_repeat = run_args.get("num_beams", 8), run_args.get("no_repeat_ngram", 3)
    settings = {"greedy": dict(num_beams=1, no_repeat_ngram=no_repeat),
                f"beam {beams}": dict(num_beams=beams, return_all=True, no_repeat_ngram=no_repeat)}
    return folder, model, texts, model.encode(texts), settings


def peak_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak RSS so far


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


class Baseline(nn.Module):
    """GPT-2 with cross-attention to the vector: what a user would write with transformers."""

    def __init__(self, vector_dim, vocab_size, d_model, n_layer, n_head, max_len, bos_id, eos_id, pad_id):
        super().__init__()
        config = GPT2Config(vocab_size=vocab_size, n_positions=max_len + 2, n_embd=d_model, n_layer=n_layer,
                            n_head=n_head, add_cross_attention=True, bos_token_id=bos_id, eos_token_id=eos_id,
                            pad_token_id=pad_id)
        self.gpt = GPT2LMHeadModel(config)
        self.proj = nn.Linear(vector_dim, d_model)

    def memory(self, vectors):
        return self.proj(vectors)[:, None]  # (B, 1, D): one cross-attention slot

    def loss(self, vectors, inputs, labels):
        return self.gpt(input_ids=inputs, encoder_hidden_states=self.memory(vectors), labels=labels).loss


def timed(fn, device, repeat=1):
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    sync(device)
    return out, (time.perf_counter() - t0) / repeat


def main(argv=None):
    keep_freed_memory()  # for both methods alike
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sentences", type=int, default=2048, help="training sentences (from the default corpus)")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per method (after --warmup steps)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (with --compile: enough for the "
                   "recompiles of a new batch shape, which torch.compile makes dynamic at the second)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--gen-sentences", type=int, default=256, help="sentences generated per method and setting")
    p.add_argument("--gen-batch-size", type=int, default=256, help="sentences decoded at once, by each method")
    p.add_argument("--gen-warmup", type=int, default=1, help="untimed generation passes of each method first (on a "
                   "GPU the first pass meets every shape for the first time)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--bucket-pool", type=int, default=50, help="recon's length bucketing (0: off), as in train.py")
    p.add_argument("--compile", action="store_true", help="torch.compile recon's training step, as train.py --compile")
    p.add_argument("--pad-multiple", type=int, default=0,
                   help="pad each training batch's length to a multiple of this (default: 8 with --compile, as "
                        "train.py does, else 1)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", default="benchmark.json")
    p.add_argument("--encoder", default=None, help="an encoder folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--data", default=None, help="a text file (default: the packaged Wikipedia summaries)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    pad = args.pad_multiple or (8 if args.compile else 1)

    enc_spec = EncoderSpec(**({"encoder": args.encoder} if args.encoder else {}))  # default: all-MiniLM-L6-v2 [CLS]
    # one prefix slot and no auxiliary loss: the same work as the baseline's one cross-attention slot;
    # room for `pad` more positions (both models): a batch is padded to a multiple of it ([EOS] included)
    dec_spec = DecoderSpec(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head, dropout=0.0,
                           max_target_len=args.max_new_tokens + pad, num_prefix=1, bow_weight=0.0)
    encoder = enc_spec.build().to(device).eval()
    data = {"data": args.data} if args.data else {}
    corpus = DataConfig(**data, max_texts=int(args.sentences * 1.6) + 64).build(encoder.count_tokens, enc_spec.max_length)
    texts = corpus.texts("train")[:args.sentences]
    tok = SentencePieceTokenizer.train(texts, args.vocab_size)
    targets = [ids[:args.max_new_tokens] + [tok.eos_id] for ids in tok.encode(texts)]
    model = ReconModel.from_encoder(encoder, tok, enc_spec, dec_spec).to(device)
    base = Baseline(encoder.dim, tok.vocab_size, args.d_model, args.n_layer, args.n_head, args.max_new_tokens + pad,
                    tok.bos_id, tok.eos_id, tok.pad_id).to(device)
    rows = {}

    vectors, t_encode = timed(lambda: encoder.encode(texts), device)
    model.decoder.set_vector_stats(vectors)
    rows["encode corpus once"] = {"seconds": t_encode, "sentences_per_second": len(texts) / t_encode}

    lengths = [len(y) for y in targets]
    recon_batches = Batches(lengths, args.batch_size, seed=1, pool=args.bucket_pool)

    def plain_batches():  # what a user would write: shuffled, unsorted
        g = torch.Generator().manual_seed(1)
        while True:
            yield torch.randint(0, len(texts), (args.batch_size,), generator=g).tolist()

    def bucketed_batches():
        step = 0
        while True:
            yield recon_batches(step)
            step += 1

    def train(step_fn, params, batch_iter, flops_of):
        """tokens/s, model FLOP/s and the padding share of `args.steps` timed steps (after `args.warmup`)."""
        opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
        it = batch_iter()
        for n in range(args.warmup + args.steps):
            if n == args.warmup:
                sync(device)
                t0, tokens, flops, shapes = time.perf_counter(), 0, 0.0, []
            idx = next(it)
            y = pad_batch([targets[i] for i in idx], tok.pad_id, device, pad)
            n_tok = sum(lengths[i] for i in idx)
            with autocast(device):
                loss = step_fn(idx, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if n >= args.warmup:
                tokens += n_tok
                flops += n_tok * flops_of(max(lengths[i] for i in idx))
                shapes.append([lengths[i] for i in idx])
        sync(device)
        seconds = time.perf_counter() - t0
        return tokens / seconds, flops / seconds, padding_fraction(shapes)

    step = TrainStep(model)
    if args.compile:
        step = torch.compile(step)

    def recon_step(idx, y):  # as in train.py: the summed token loss over the batch's token count
        return step(y, vectors=vectors[idx]) / sum(lengths[i] for i in idx)

    def base_step(idx, y):
        with torch.no_grad():  # the plain way: the frozen encoder runs on every batch
            batch = encoder.tokenize([texts[i] for i in idx]).to(device)
            v = encoder(batch["input_ids"], batch["attention_mask"])
        bos = torch.full((len(idx), 1), tok.bos_id, device=device)
        inputs = torch.cat([bos, y[:, :-1]], 1)
        return base.loss(v, inputs, y.masked_fill(y == tok.pad_id, -100))

    base_matmul = sum(p.numel() for n, p in base.named_parameters() if p.dim() == 2 and "wte" not in n
                      and "wpe" not in n) + base.gpt.transformer.wte.weight.numel()  # + its tied output layer
    model.train()
    reset_peak(device)
    r_tps, r_flops, r_pad = train(recon_step, model.decoder.parameters(), bucketed_batches,
                                  model.decoder.flops_per_token)
    r_mem = peak_mb(device)
    reset_peak(device)
    b_tps, b_flops, b_pad = train(base_step, base.parameters(), plain_batches,
                                  lambda T: transformer_flops_per_token(base_matmul, args.n_layer, args.d_model, T + 1))  # + [BOS]
    b_mem = peak_mb(device)
    rows["training tokens/s"] = {"recon": r_tps, "baseline": b_tps, "ratio": r_tps / b_tps}
    peak = peak_flops(device)
    if peak:
        rows["training MFU % (model FLOPs / bf16 peak)"] = {
            "recon": 100 * r_flops / peak, "baseline": 100 * b_flops / peak, "ratio": r_flops / b_flops}
    rows["training padding % of positions"] = {"recon": 100 * r_pad, "baseline": 100 * b_pad}
    rows["training peak memory MB (CUDA: allocated; CPU: process RSS so far)"] = {"recon": r_mem, "baseline": b_mem}

    model.eval()
    base.eval()
    gvec = vectors[:args.gen_sentences]
    n_new = args.max_new_tokens + 1  # the decoder's longest output, [EOS] included
    for beams in (1, 4):
        # untrained models stop at random points; both are made to write the full length (no [EOS])
        # so that they do the same work, counted in the table's token columns
        def recon_generate(beams=beams, static=False):
            ids, gb = [], args.gen_batch_size
            for s in range(0, len(gvec), gb):
                v = gvec[s:s + gb]
                if static:
                    ids += greedy_static(model.decoder, v, tok.bos_id, -1, n_new)
                elif beams == 1:
                    ids += greedy(model.decoder, v, tok.bos_id, -1, n_new)
                else:
                    ids += beam_search(model.decoder, v, tok.bos_id, -1, beams, 1.0, n_new)
            return [tok.decode(x) for x in ids], sum(map(len, ids))

        def hf_generate(beams=beams):
            texts_out, n, gb = [], 0, args.gen_batch_size
            for s in range(0, len(gvec), gb):
                v = gvec[s:s + gb]
                ids = torch.full((len(v), 1), tok.bos_id, device=device)
                with torch.no_grad(), autocast(device):
                    out = base.gpt.generate(input_ids=ids, encoder_hidden_states=base.memory(v), num_beams=beams,
                                            do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new)
                texts_out += [tok.decode(row[1:].tolist()) for row in out]
                n += out[:, 1:].numel()
            return texts_out, n
        for _ in range(args.gen_warmup):
            recon_generate()
            hf_generate()
        (_, r_tokens), t_r = timed(recon_generate, device)
        (_, b_tokens), t_b = timed(hf_generate, device)
        name = "greedy" if beams == 1 else f"beam {beams}"
        rows[f"generation sentences/s, {name}"] = {
            "recon": len(gvec) / t_r, "baseline": len(gvec) / t_b, "ratio": t_b / t_r,
            "recon_tokens": r_tokens, "baseline_tokens": b_tokens}
        if beams == 1:  # greedy on fixed shapes: on CUDA one graph replay a token step (recon.decoding.greedy_static)
            name = "generation sentences/s, greedy, fixed shapes" + (", a CUDA graph a step" if device.type == "cuda" else "")
            try:
                for _ in range(args.gen_warmup):
                    recon_generate(static=True)
                (_, g_tokens), t_g = timed(lambda: recon_generate(static=True), device)
                rows[name] = {"recon": len(gvec) / t_g, "baseline": len(gvec) / t_b, "ratio": t_b / t_g,
                              "recon_tokens": g_tokens, "baseline_tokens": b_tokens}
            except Exception as e:  # a failure here keeps the other rows: the table says what it was
                rows[name] = {"error": f"{type(e).__name__}: {e}"}

    lines = [f"device: {device}{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, "
             f"torch {torch.__version__}, decoder {args.d_model} wide x {args.n_layer} layers, "
             f"vocabulary {tok.vocab_size}, batch {args.batch_size}, {len(texts)} sentences",
             "", "| measure | recon | baseline | recon / baseline |", "|---|---:|---:|---:|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:200]} | | |")
        elif "ratio" in r:
            lines.append(f"| {name} | {r['recon']:,.1f} | {r['baseline']:,.1f} | {r['ratio']:.1f}x |")
        elif "recon" in r:
            lines.append(f"| {name} | {r['recon']:,.1f} | {r['baseline']:,.1f} | |")
        else:
            lines.append(f"| {name} | {r['seconds']:.1f} s ({r['sentences_per_second']:,.0f} sentences/s) | | |")
    table = "\n".join(lines)
    print(table)
    with open(args.output, "w") as f:
        json.dump({"args": vars(args), "rows": rows, "table": table}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
