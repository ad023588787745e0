"""Evaluate a recon checkpoint on any text: reconstructions, metrics, controls, a report.

CPU, the test split of the data the checkpoint was trained on:
    python evaluate.py --checkpoint checkpoints/default --output-dir checkpoints/default/eval
Any other text (a .txt/.jsonl/.csv file; evaluates all of it by default), with beam search on a GPU:
    python evaluate.py --checkpoint checkpoints/default --data my.txt --num-beams 4 --device cuda --output-dir out/
A corrector (train.py --base-model), 5 correction steps with a sequence beam of 4:
    python evaluate.py --checkpoint checkpoints/corrector --correction-steps 5 --correction-beam 4 --output-dir out/
Vector feedback, no corrector (any checkpoint: the decoded vector moved by the re-encoded output's residual):
    python evaluate.py --checkpoint checkpoints/default --correction-steps 3 --correction-beam 8 --output-dir out/
Sharded over 8 GPUs (each process decodes every 8th text; rank 0 gathers them and writes):
    torchrun --standalone --nproc_per_node 8 evaluate.py --checkpoint checkpoints/default --device cuda --output-dir out/
`python evaluate.py --help` lists every flag.
"""

import os
import sys

from recon import distributed
from recon.cache import DEFAULT_CACHE_DIR, cached_encode, encoder_cache
from recon.checkpoint import load_meta, resolve_checkpoint
from recon.config import EvalConfig, ProbeSettings, describe_decoding, parse
from recon.corrector import correction_table, evaluate_correction
from recon.data import DataConfig, DataError, describe
from recon.device import keep_freed_memory
from recon.errors import ReconError, print_error
from recon.evaluation import evaluate_split
from recon.model import ReconModel
from recon.progress import progress, quiet_libraries
from recon.probes import probe_checkpoint
from recon.report import headline_table, uncertainty_lines
from recon.spec import part


def retrieval_pool(cfg, trained_args, corpus, model, say):
    """The checkpoint's training split and its vectors, for the retrieval control: ([], None) when it
    cannot be rebuilt. corpus: the evaluated corpus when it is the training data, else None (rebuilt
    from the args). A frozen encoder's vectors come from the run's vector cache, where its training
    left them (or are encoded and kept there); others are encoded by the evaluation."""
    if cfg.retrieval_pool == 0:
        return [], None
    if corpus is None:
        if "data" not in trained_args:
            return [], None
        try:
            corpus = model.training_corpus()
        except DataError as e:
            say(f"warning: no retrieval control: the training data cannot be read here ({e})")
            return [], None
    texts = corpus.texts("train")[:cfg.retrieval_pool]
    cache_dir, encoder_id = encoder_cache(model.config.encoder_spec, model.encoder,
                                          trained_args.get("cache_dir", DEFAULT_CACHE_DIR))
    if not cache_dir:
        return texts, None
    with progress(total=len(texts), desc="retrieval pool", leave=False, disable=not distributed.is_main()) as bar:
        vectors, hit = cached_encode(model.encoder, texts, cache_dir, encoder_id, cfg.batch_size, bar)
    say(f"retrieval pool: {len(texts)} training texts, their vectors " + ("read from" if hit else "kept in")
        + f" the cache in {cache_dir}")
    return texts, vectors


def check_loop_flags(cfg, model, folder):
    """Refuse the correction and feedback flags that do not fit this checkpoint, saying what to give instead."""
    if model.base is None and cfg.correction_beam > 1 and not cfg.correction_steps:
        raise ReconError(f"{folder} is not a corrector: --correction-beam needs --correction-steps N (vector "
                         "feedback on a plain checkpoint), or a checkpoint of `python train.py --base-model RUN_DIR`")
    if model.base is not None and cfg.feedback_rate is not None and not cfg.feedback_steps:
        raise ReconError(f"{folder} is a corrector, which reads its hypothesis's vector itself: --feedback-rate "
                         "is for vector feedback on a plain checkpoint, or on its base with --feedback-steps N")
    if model.base is None and cfg.correction_rate:
        raise ReconError(f"{folder} is not a corrector: --correction-rate moves a corrector's target slot; vector "
                         "feedback on a plain checkpoint moves its input by --feedback-rate")
    if cfg.companions and not (cfg.feedback_steps if model.base is not None else cfg.correction_steps):
        raise ReconError(f"--companions join vector feedback: give {folder} --feedback-steps N (a corrector) or "
                         "--correction-steps N (a plain checkpoint) too")
    if model.base is None and cfg.feedback_steps:
        raise ReconError(f"{folder} is not a corrector: --feedback-steps runs vector feedback on a corrector's base "
                         "first; on a plain checkpoint give --correction-steps N (its vector feedback) instead")


def main(argv=None):
    quiet_libraries()
    keep_freed_memory()
    try:
        cfg = parse(EvalConfig, argv)
        folder = resolve_checkpoint(cfg.checkpoint)
        meta = load_meta(folder)
        given_beams = cfg.num_beams is not None
        cfg.with_decoding_of(meta.get("args", {}))
        model = ReconModel.from_pretrained(folder, encoder=cfg.encoder, representation=cfg.representation,
                                           device=distributed.setup(cfg.device))
        model.set_precisions(cfg.encoder_precision, cfg.generation_precision)  # unset: as the checkpoint's run ran
        say = print if distributed.is_main() else (lambda *a, **k: None)  # under torchrun: rank 0 alone prints
        check_loop_flags(cfg, model, folder)
        model.add_companions([c for c in cfg.companions.split(",") if c], device=model.device)
        plain_loop = model.base is None and bool(cfg.correction_steps)
        say(f"decoding: {describe_decoding(cfg.num_beams, cfg.rerank, cfg.correction_steps if cfg.loop_of_run else 0)}"
            + (", as the run's own evaluation decoded (--correction-steps 0 for the first pass alone)" if cfg.loop_of_run
               else "" if given_beams else " (step 0 of vector feedback: the single pass)" if plain_loop
               else " (as the run's own evaluation decoded" + ("; --num-beams 1 for greedy)" if cfg.num_beams > 1 else ")")))
        dcfg, same = DataConfig.from_meta(meta.get("args", {}), data=cfg.data, text_field=cfg.text_field,
                                          sentence_split=cfg.sentence_split)
        corpus = dcfg.build(model.encoder.count_tokens, model.config.max_length)
        say(describe(corpus.stats))
        if same and meta.get("data", {}).get("corpus_hash") not in (None, corpus.stats["corpus_hash"]):
            say("warning: the data differs from what the checkpoint was trained on (corpus hash); "
                "the split is still by text hash, so the test split holds no training text")
        split = cfg.split or ("test" if same else "all")
        correction, given = None, None
        # the loop step by step beside its ablations: asked for, or a corrector's (not the run's own feedback)
        if (model.base is not None or (cfg.correction_steps and not cfg.loop_of_run)) and distributed.is_main():
            steps = model.correction_steps if cfg.correction_steps is None else cfg.correction_steps
            say(f"{'correction' if model.base is not None else 'vector feedback'}, step by step, beside its ablations "
                f"(correction.md in {cfg.output_dir}):")
            correction = evaluate_correction(model, corpus.texts(split)[:cfg.max_examples], steps, cfg.correction_beam,
                                             cfg.seed, cfg.batch_size, cfg.no_repeat_ngram, cfg.output_dir, say,
                                             no_repeat_match=cfg.no_repeat_match, ablations=cfg.ablations,
                                             rate=cfg.feedback_rate, feedback_steps=cfg.feedback_steps,
                                             feedback_beam=cfg.feedback_beam, correction_rate=cfg.correction_rate,
                                             num_beams=cfg.num_beams)
            if cfg.rerank == "none" and cfg.length_penalty == 1.0 and distributed.world_size() == 1:
                # the headline's reconstruction and random control are that run's last step: not decoded twice
                given = {"predictions": correction["conditions"]["correction"]["predictions"],
                         "decode_seconds": sum(r["seconds"] for r in correction["conditions"]["correction"]["curve"]),
                         **({"random": correction["conditions"]["random target"]["predictions"]}
                            if "random target" in correction["conditions"] else {})}
        pool = retrieval_pool(cfg, meta.get("args", {}), corpus if same else None, model, say)
        metrics = evaluate_split(model, corpus, split, cfg.output_dir, log=say, given=given,
                                 info={"checkpoint": folder, "step": meta.get("step"), "data": dcfg.data},
                                 max_examples=cfg.max_examples, num_beams=cfg.num_beams,
                                 length_penalty=cfg.length_penalty, batch_size=cfg.batch_size, seed=cfg.seed,
                                 no_repeat_ngram=cfg.no_repeat_ngram, no_repeat_match=cfg.no_repeat_match,
                                 rerank=cfg.rerank, correction_steps=cfg.correction_steps,
                                 correction_beam=cfg.correction_beam, feedback_rate=cfg.feedback_rate,
                                 feedback_steps=cfg.feedback_steps, feedback_beam=cfg.feedback_beam,
                                 correction_rate=cfg.correction_rate,
                                 pool_texts=pool[0], pool_vectors=pool[1])
        say(f"\n{split} split of {dcfg.data}, {metrics['num_examples']} texts (report in {cfg.output_dir}/report.md):")
        say(headline_table(metrics))
        say(uncertainty_lines(metrics))
        if correction is not None:
            say(f"\n{correction_table(correction)}")
        if cfg.probes and distributed.is_main():
            whole_test = split == "test" and same and metrics["num_examples"] == len(corpus.texts("test"))
            if not whole_test:
                say("the probes set the checkpoint's greedy pass beside them, not this evaluation's decoding: "
                    "that needs the whole test split of the training data")
            probe_checkpoint(folder, model, part(ProbeSettings, cfg), cfg.output_dir, DEFAULT_CACHE_DIR,
                             cfg.batch_size, cfg.seed, say,
                             prediction_files=[os.path.join(cfg.output_dir, "predictions.jsonl")] if whole_test else ())
    except ReconError as e:
        print_error(e)
        return 2
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
