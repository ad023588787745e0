"""More training sentences from the training split alone: copies of its sentences with some
words swapped for words seen between the same neighbours elsewhere in it.

The encoder is frozen, so each copy, encoded, is a (vector, text) pair of its own: the decoder
meets its words in company the corpus never put them in, and must take them from the vector.
What may be swapped: a word (letters, or digits) outside the corpus's commonest, with no
punctuation attached. Its substitute has the same form (capitalised, lower case, digits) and
sat between the same two words somewhere in the sentences given (a trigram's middle), or,
failing that, followed the left one and preceded the right one. Positions with neither keep
their word. Only the texts passed in are read, so copies of training sentences carry nothing of
a held-out one.
"""

import collections
import random
import re

FORMS = ("upper", "lower", "digit")
_WORD = re.compile(r"^(\W*)([\w'-]+?)(\W*)$")  # leading punctuation, the word, trailing punctuation


def form(word):
    if word.isdigit():
        return "digit"
    if word[:1].isupper():
        return "upper"
    return "lower" if word.isalpha() else None


def _split(token):
    m = _WORD.match(token)
    return (m.group(1), m.group(2), m.group(3)) if m else ("", None, token)  # no word: kept as it is


class Substituter:
    """Where each word was seen in `texts`; `copy(i)` writes a copy of texts[i]."""

    def __init__(self, texts, rate=0.15, forms=FORMS, n_common=100, seed=0):
        self.texts, self.rate, self.forms = texts, rate, tuple(forms)
        self.rng = random.Random(seed)
        self.words = [[_split(t) for t in s.split()] for s in texts]  # per sentence (lead, word, trail)
        count = collections.Counter(w for s in self.words for _, w, _ in s if w)
        self.common = {w for w, _ in count.most_common(n_common)}
        self.between, self.after, self.before = (collections.defaultdict(set) for _ in range(3))
        for s in self.words:  # each word indexed by its form, so a substitute's form is the looked-up one
            for i in self._spots(s, FORMS):
                left, right = self._neighbours(s, i)
                w = s[i][1]
                f = form(w)
                self.between[left, right, f].add(w)
                self.after[left, f].add(w)
                self.before[right, f].add(w)

    def _spots(self, s, forms):
        return [i for i, (lead, w, trail) in enumerate(s)
                if w and w not in self.common and form(w) in forms and not lead and not trail]

    @staticmethod
    def _neighbours(s, i):
        # a neighbour behind punctuation ("France, the") is a sentence edge, as the ends are
        left = s[i - 1][1] if i > 0 and not s[i - 1][2] else "<s>"
        right = s[i + 1][1] if i + 1 < len(s) and not s[i + 1][0] else "</s>"  # None: a token with no word
        return left, right

    def copy(self, i):
        """texts[i] with round(rate * its words), at least one, swapped where a substitute exists."""
        s = self.words[i]
        out, todo = list(s), max(1, round(self.rate * len(s)))
        spots = self._spots(s, self.forms)
        self.rng.shuffle(spots)
        for j in spots:
            if todo == 0:
                break
            left, right = self._neighbours(s, j)
            w = s[j][1]
            f = form(w)
            cands = [x for x in self.between.get((left, right, f), ()) if x != w]
            if not cands:
                cands = [x for x in self.after.get((left, f), set()) & self.before.get((right, f), set()) if x != w]
            if cands:
                out[j] = ("", self.rng.choice(sorted(cands)), "")
                todo -= 1
        return " ".join(lead + (w or "") + trail for lead, w, trail in out)

    def copies(self, n, keep=lambda text: True):
        """n rounds of one copy per text, new ones only (not a text, not an earlier copy), in order;
        keep(text) may refuse a copy."""
        seen, out = set(self.texts), []
        for _ in range(n):
            for i in range(len(self.texts)):
                c = self.copy(i)
                if c not in seen and keep(c):
                    seen.add(c)
                    out.append(c)
        return out
