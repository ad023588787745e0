"""Evaluate a recon checkpoint on any text: reconstructions, metrics, controls, a report.

CPU, the test split of the data the checkpoint was trained on:
    python evaluate.py --checkpoint checkpoints/default --output-dir checkpoints/default/eval
Any other text (a .txt/.jsonl/.csv file; evaluates all of it by default), with beam search on a GPU:
    python evaluate.py --checkpoint checkpoints/default --data my.txt --num-beams 4 --device cuda --output-dir out/
Sharded over 8 GPUs (each process decodes every 8th text; rank 0 gathers them and writes):
    torchrun --standalone --nproc_per_node 8 evaluate.py --checkpoint checkpoints/default --device cuda --output-dir out/
`python evaluate.py --help` lists every flag.
"""

import os
import sys

from recon import distributed
from recon.checkpoint import load_meta
from recon.config import ConfigError, DataConfig, EvalConfig, parse
from recon.data import DataError, build_corpus, describe
from recon.errors import ReconError
from recon.evaluation import evaluate, write_outputs
from recon.model import ReconModel, resolve_checkpoint
from recon.report import headline_table


def data_fields(args):
    """The data settings among a run's recorded arguments (meta.json "args")."""
    return {k: v for k, v in args.items() if k in DataConfig.__dataclass_fields__}


def data_config(cfg, trained):
    """The data settings: as trained, with this run's overrides."""
    keep = data_fields(trained)
    data = cfg.data or keep.get("data")
    if data is None:
        raise ConfigError("the checkpoint does not record its training data; pass --data FILE")
    same = cfg.data is None or os.path.abspath(data) == os.path.abspath(keep.get("data", ""))
    if not same:  # new text: nothing is held out of it, so evaluate all of it by default
        keep = {k: v for k, v in keep.items() if k in ("max_length", "too_long")}
    keep["data"] = data
    for name in ("text_field", "sentence_split"):
        if getattr(cfg, name) is not None:
            keep[name] = getattr(cfg, name)
    return DataConfig(**keep), same


def training_texts(cfg, dcfg, meta, corpus, model):
    """The checkpoint's training split, for the retrieval control ([] when it cannot be rebuilt)."""
    if cfg.retrieval_pool == 0:
        return []
    if corpus is None:  # new data: rebuild the training corpus the checkpoint recorded
        trained = meta.get("args", {})
        if "data" not in trained:
            return []
        tcfg = DataConfig(**data_fields(trained))
        try:
            corpus = build_corpus(tcfg.data, model.encoder.count_tokens, **tcfg.corpus_kwargs())
        except DataError as e:
            print(f"warning: no retrieval control: the training data cannot be read here ({e})")
            return []
    return corpus.texts("train")


def main(argv=None):
    try:
        cfg = parse(EvalConfig, argv)
        folder = resolve_checkpoint(cfg.checkpoint)
        model = ReconModel.from_pretrained(folder, encoder=cfg.encoder, representation=cfg.representation,
                                           device=distributed.setup(cfg.device))
        rank0 = distributed.is_main()  # under torchrun: rank 0 alone prints and writes
        say = print if rank0 else (lambda *a, **k: None)
        meta = load_meta(folder)
        dcfg, same = data_config(cfg, meta.get("args", {}))
        split = cfg.split or ("test" if same else "all")
        corpus = build_corpus(dcfg.data, model.encoder.count_tokens, **dcfg.corpus_kwargs())
        say(describe(corpus.stats))
        if same and meta.get("data", {}).get("corpus_hash") not in (None, corpus.stats["corpus_hash"]):
            say("warning: the data differs from what the checkpoint was trained on (corpus hash); "
                "the split is still by text hash, so the test split holds no training text")
        texts = corpus.texts(split)[:cfg.max_examples]
        if not texts:
            raise DataError(f"the {split} split of {dcfg.data} is empty; choose another --split")
        pool = training_texts(cfg, dcfg, meta, corpus if same else None, model)[:cfg.retrieval_pool]
        metrics, rows = evaluate(model, texts, [corpus.lengths[t] for t in texts], num_beams=cfg.num_beams,
                                 length_penalty=cfg.length_penalty, batch_size=cfg.batch_size, seed=cfg.seed,
                                 rerank=cfg.rerank, pool_texts=pool, log=say)
        metrics.update(checkpoint=folder, step=meta.get("step"), data=dcfg.data, split=split)
        if rank0:
            write_outputs(cfg.output_dir, metrics, rows, title=f"recon: {folder} on {dcfg.data} ({split})")
    except ReconError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    if not rank0:
        return 0
    print(f"\n{split} split of {dcfg.data}, {len(texts)} texts (report in {cfg.output_dir}/report.md):")
    print(headline_table(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
