"""The default corpus as a file, one sentence a line, and the same with the package's article titles and
short descriptions ("Eiffel Tower", "Tower in Paris, France") added as training texts:

    python experiments/wiki_extras.py OUT_DIR
    python train.py --data OUT_DIR/sentences.txt --eval-split validation --output-dir checkpoints/exp/sent_s0
    python train.py --data OUT_DIR/extras.txt --eval-split validation --output-dir checkpoints/exp/extras_s0

sentences.txt splits into the default's training, validation and test texts (split_of hashes a text
alone), so a run on it is the default run. extras.txt adds a title or description only if it hashes to
the training split itself and its article gave no sentence to the validation or test split: nothing
added names what a held-out sentence's article is about.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recon.data import DataConfig, normalize_whitespace, split_of, split_sentences, wiki_offline_path  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
with open(wiki_offline_path(), encoding="utf-8") as f:
    articles = [a for a in json.load(f).values() if a.get("extract")]
config = DataConfig()  # the default run's split fractions and salt
split = lambda t: split_of(t, config.validation_fraction, config.test_fraction, config.split_seed)  # noqa: E731
sentences, extras = [], []
for a in articles:
    own = split_sentences(a["extract"])
    sentences.extend(own)
    if all(split(s) == "train" for s in own):
        extras.extend(normalize_whitespace(a.get(k) or "") for k in ("title", "description"))
seen = set(sentences)
extras = list(dict.fromkeys(t for t in extras if t and t not in seen and split(t) == "train"))
with open(os.path.join(out, "sentences.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(sentences) + "\n")
with open(os.path.join(out, "extras.txt"), "w", encoding="utf-8") as f:
    f.write("\n".join(sentences + extras) + "\n")
print(f"{len(articles)} articles, {len(sentences)} sentences; {len(extras)} titles and descriptions added "
      f"(articles with no held-out sentence, each text in the training split): {out}/extras.txt")
