"""Generate the synthetic English news NER corpus shipped in assets/demo/.

Users of the package rarely have CoNLL-2003 at hand, so the demo runs on this
corpus instead. Sentences come from hand-written templates and name lists and
are grouped into short news documents (politics, business, football, general
news). The training split carries deliberate annotation errors, so that the
demo can show them being found:

* systematic: in a few football documents, clubs named after their city
  ("Liverpool", "Barcelona") are labelled LOC instead of ORG, while the same
  names as places are LOC everywhere;
* random: single-sentence mistakes of the wrong type, a missing entity or a
  wrong boundary.

`train_corrected.jsonl` holds the clean gold of `train.jsonl` and
`injected_errors.jsonl` lists every injected change. The output depends only
on --seed. Standard library only.
"""

import argparse
import json
import random
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "assets" / "demo"
SPLIT_SIZES = {"train": 600, "dev": 150, "test": 150}
N_SYSTEMATIC_DOCS = 8
RANDOM_ERRORS = {"wrong_type": 5, "missing_entity": 5, "wrong_boundary": 5}
TOPIC_WEIGHTS = {"politics": 0.25, "business": 0.22, "sports": 0.33, "general": 0.2}
ENTITY_TYPES = ("PER", "ORG", "LOC", "MISC")

FIRST_NAMES = """Peter Maria John Anna Michael Elena Thomas Sarah David Laura James Sofia Robert Claire
Hans Ingrid Pierre Isabelle Carlos Lucia Marco Giulia Jan Katarina Ahmed Leila Yuri Olga Kenji
Yuki Paul Helen Mark Monica Stefan Agnes Luis Carmen Alan Nadia""".split()
LAST_NAMES = (
    """Blackburn Hartmann Dubois Moretti Kowalski Fernandes Lindqvist Novak O'Brien Schneider
Rossi Petrov Tanaka Haddad Jensen Murray Keller Lambert Costa Vidal Brennan Weber Marchetti Svensson
Nakamura Okafor Horvath Bauer Delgado Fischer Gallagher Ivanova Larsen Mendes Quinn Richter Sato
Walsh Zimmermann""".split()
    + ["Van der Berg", "De Luca", "Al Hassan"]
)

# Football clubs that share their name with their city: the source of the systematic error.
CITY_CLUBS = """Liverpool Barcelona Valencia Newcastle Leeds Marseille Lyon Bordeaux Porto Hamburg
Monaco Bologna Genoa Dortmund""".split()
OTHER_CLUBS = [
    "Manchester United",
    "Real Madrid",
    "Bayern Munich",
    "Ajax",
    "Juventus",
    "Inter Milan",
    "Celtic",
    "Rangers",
    "Arsenal",
    "Tottenham",
    "Everton",
    "PSV Eindhoven",
    "Feyenoord",
    "Benfica",
    "Sporting Lisbon",
    "Atletico Madrid",
    "Paris St Germain",
    "Werder Bremen",
    "Fiorentina",
    "Lazio",
]
CITIES = (
    CITY_CLUBS
    + """London Paris Berlin Madrid Rome Vienna Brussels Geneva Warsaw Prague Moscow Tokyo
Cairo Nairobi Sydney Toronto Chicago Boston Lisbon Athens Dublin Oslo Stockholm Istanbul Seoul
Manila Lagos Mumbai""".split()
    + ["New York", "Hong Kong", "Buenos Aires", "Rio de Janeiro", "Tel Aviv", "Sao Paulo"]
)
COUNTRIES = (
    """Germany France Italy Spain Portugal Britain Ireland Poland Russia Japan China Egypt Kenya
Nigeria Brazil Argentina Canada Australia India Turkey Greece Sweden Norway Austria Belgium Israel
Mexico""".split()
    + ["South Africa", "South Korea", "Saudi Arabia", "New Zealand"]
)
NATIONALITIES = """German French Italian Spanish Portuguese British Irish Polish Russian Japanese Chinese
Egyptian Kenyan Nigerian Brazilian Argentine Canadian Australian Indian Turkish Greek Swedish
Norwegian Austrian Belgian Israeli Mexican Dutch Scottish European""".split()
# Organisations by topic; every name reads naturally after "the".
ORGS_BY_TOPIC = {
    "politics": [
        "European Commission",
        "United Nations",
        "European Union",
        "World Bank",
        "IMF",
        "OSCE",
        "Social Democrats",
        "Labour Party",
        "Christian Democrats",
        "Green Party",
        "Supreme Court",
        "Foreign Ministry",
        "Interior Ministry",
        "Finance Ministry",
        "Security Council",
        "Council of Europe",
        "Arab League",
        "Organisation of African Unity",
    ],
    "business": [
        "Deutsche Bank",
        "Siemens",
        "General Motors",
        "Nestle",
        "Fiat",
        "Volvo",
        "Northfield Capital",
        "Meridian Steel",
        "Atlas Airways",
        "Helix Pharmaceuticals",
        "Orion Telecom",
        "Baltic Shipping",
        "Kestrel Motors",
        "Sunvale Foods",
        "Goldman Sachs",
        "Unilever",
        "Crestline Energy",
        "Philips",
    ],
    "sports": ["UEFA", "FIFA", "Football Association", "Scottish Football Association", "Italian Football Federation"],
    "general": [
        "Red Cross",
        "United Nations",
        "World Health Organisation",
        "Salvation Army",
        "European Union",
        "World Food Programme",
        "Civil Defence Agency",
        "Coast Guard",
    ],
}
CENTRAL_BANKS = [
    "Bundesbank",
    "Federal Reserve",
    "Bank of England",
    "Bank of Japan",
    "Bank of France",
    "Swiss National Bank",
]
# Named things other than people, organisations and places (CoNLL's MISC).
MISC_POOLS = {
    "<NAT>": NATIONALITIES,
    "<CUP>": ["Champions League", "UEFA Cup", "Cup Winners ' Cup", "FA Cup", "German Cup", "Coppa Italia"],
    "<TOURNEY>": ["World Cup", "European Championship", "African Nations Cup", "Asian Cup", "Olympic"],
    "<EVENT>": [
        "Olympic Games",
        "Cannes Film Festival",
        "Frankfurt Book Fair",
        "Edinburgh Festival",
        "Venice Biennale",
        "Expo 2000",
    ],
    "<PRIZE>": ["Nobel Prize for Literature", "Booker Prize", "Pulitzer Prize", "Goncourt Prize", "Nobel Peace Prize"],
}

DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()

# Slots in ENTITY_SLOTS take entities; <DAY> <MONTH> <NUM> <BIG> <PCT> <SCORE> <DRAW>
# <GOALS> <MIN> <AGE> <YEAR> take plain words; every other token is literal.
TEMPLATES = {
    "politics": [
        "<PER> , the <NAT> foreign minister , arrived in <CITY> on <DAY> for talks with <PER> .",
        "<COUNTRY> and <COUNTRY> agreed to resume negotiations in <MONTH> , officials said .",
        "The <ORG> said in a statement it would review the proposal before <MONTH> .",
        "Prime Minister <PER> told reporters in <CITY> that the government would not resign .",
        '<PER> said the talks had been " constructive " but that no agreement was reached on <DAY> .',
        "Opposition leader <PER> accused the <ORG> of ignoring voters outside <CITY> .",
        "The <NAT> parliament voted <NUM> to <NUM> in favour of the bill on <DAY> .",
        "Thousands of people marched through <CITY> on <DAY> to protest against the new tax law .",
        "<PER> , a spokesman for the <ORG> , declined to comment .",
        "Diplomats from <COUNTRY> will meet their <NAT> counterparts in <CITY> next week .",
        "<PER> won <PCT> percent of the vote in <COUNTRY> , according to official results .",
        "<ORG> officials will visit <CITY> and <CITY> later this month .",
        "The <ORG> called on <COUNTRY> to release the <NAT> journalists detained in <MONTH> .",
        "<COUNTRY> 's president , <PER> , said on <DAY> he would seek a second term in <YEAR> .",
        "No date has been set for the next round of talks , which ended on <DAY> .",
        "Turnout was estimated at <PCT> percent , lower than in <YEAR> .",
    ],
    "business": [
        "Shares in <ORG> rose <PCT> percent to <NUM> pence in <CITY> on <DAY> .",
        "<ORG> said net profit rose to <NUM> million dollars in the first half .",
        "<ORG> agreed to buy a <PCT> percent stake in <ORG> for <NUM> million marks .",
        "<PER> , chief executive of <ORG> , said demand in <COUNTRY> remained strong .",
        "The <BANK> left interest rates unchanged at <PCT> percent on <DAY> .",
        "Analysts in <CITY> expect the <NAT> economy to grow by <PCT> percent this year .",
        "<ORG> will close its plant in <CITY> , cutting <BIG> jobs , the company said .",
        "<PER> , an analyst at <ORG> in <CITY> , said the results were better than expected .",
        "Trading was thin ahead of the <NAT> holiday on <DAY> , dealers in <CITY> said .",
        "<ORG> and <ORG> said on <DAY> they would merge their <NAT> operations .",
        "The <NAT> government sold its remaining stake in <ORG> to investors from <COUNTRY> .",
        "The index closed <NUM> points lower at <BIG> on <DAY> .",
        "Consumer prices rose <PCT> percent in <MONTH> from a year earlier .",
        "Volume was <NUM> million shares , down from <NUM> million on <DAY> .",
    ],
    "sports": [
        "<CLUB> beat <CLUB> <SCORE> on <DAY> .",
        "<CLUB> drew <DRAW> with <CLUB> at home on <DAY> .",
        "<PER> scored twice as <CLUB> won <SCORE> at <CLUB> .",
        "<CLUB> manager <PER> said his side had deserved the win .",
        "<CLUB> have signed <NAT> striker <PER> from <CLUB> for <NUM> million pounds .",
        "<PER> put <CLUB> ahead after <MIN> minutes before <PER> equalised for <CLUB> .",
        "<CLUB> moved to the top of the table after a <SCORE> victory over <CLUB> .",
        "<CLUB> 's <NAT> midfielder <PER> was sent off after <MIN> minutes .",
        "The <TOURNEY> qualifier between <COUNTRY> and <COUNTRY> will be played in <CITY> .",
        "<CLUB> face <CLUB> in the <CUP> quarter-finals in <MONTH> .",
        "<PER> , who joined <CLUB> last season , will miss the match against <CLUB> .",
        "Fans of <CLUB> travelled to <CITY> on <DAY> for the final .",
        "<CLUB> <GOALS> <CLUB> <GOALS>",
        "Soccer - <NAT> league results on <DAY> .",
        "<CLUB> coach <PER> was fined <NUM> thousand pounds by the <ORG> .",
        "The match was played in heavy rain in front of <BIG> spectators .",
        "Attendance : <BIG> .",
    ],
    "general": [
        "Police in <CITY> arrested <NUM> people after clashes on <DAY> night .",
        "At least <NUM> people were killed when a bus overturned near <CITY> , <COUNTRY> .",
        "Heavy rain caused flooding across <COUNTRY> , the <ORG> said on <DAY> .",
        "<PER> , <AGE> , was charged with murder and will appear in court in <CITY> on <DAY> .",
        "The <ORG> sent aid workers to <COUNTRY> after the earthquake .",
        "Flights between <CITY> and <CITY> were cancelled on <DAY> because of fog .",
        "A <NAT> tourist was rescued off the coast of <COUNTRY> on <DAY> .",
        "The <EVENT> will open in <CITY> in <MONTH> with entries from <NUM> countries .",
        "<PER> told reporters in <CITY> that the fire started shortly after midnight .",
        "A spokeswoman for the <ORG> said <NUM> people were still missing .",
        "<PER> , a <NAT> writer living in <CITY> , has been awarded the <PRIZE> .",
        "Temperatures will reach <NUM> degrees on <DAY> , forecasters said .",
        "The cause of the fire on <DAY> was not immediately known .",
        "Rescue workers searched through the rubble for <NUM> hours .",
    ],
}
ENTITY_SLOTS = {
    "<PER>": "PER",
    "<ORG>": "ORG",
    "<BANK>": "ORG",
    "<CLUB>": "ORG",
    "<CITY>": "LOC",
    "<COUNTRY>": "LOC",
    **{slot: "MISC" for slot in MISC_POOLS},
}

Span = Tuple[int, int, str]


class Sentence:
    """Tokens with gold entity spans; `club_city` marks clubs named after a city."""

    def __init__(self, sent_id: str, tokens: List[str], spans: List[Span], club_city: Set[int]):
        self.id = sent_id
        self.tokens = tokens
        self.gold = spans
        self.noisy = list(spans)
        self.club_city = club_city

    def record(self, spans: Sequence[Span]) -> Dict[str, object]:
        tags = ["O"] * len(self.tokens)
        for start, end, label in spans:
            tags[start:end] = [f"B-{label}"] + [f"I-{label}"] * (end - start - 1)
        return {"id": self.id, "tokens": self.tokens, "ner_tags": tags}


class DocumentWriter:
    """Fills templates for one news document from a small cast of recurring names,
    so that people, clubs and places come back the way they do in real articles."""

    def __init__(self, rng: random.Random, topic: str):
        self.rng = rng
        self.topic = topic
        self.pools = {
            "<ORG>": ORGS_BY_TOPIC[topic],
            "<BANK>": CENTRAL_BANKS,
            "<CLUB>": CITY_CLUBS + OTHER_CLUBS,
            "<CITY>": CITIES,
            "<COUNTRY>": COUNTRIES,
            **MISC_POOLS,
        }
        self.cast = {
            "<PER>": [self._person() for _ in range(3)],
            "<ORG>": rng.sample(ORGS_BY_TOPIC[topic], 2),
            "<BANK>": rng.sample(CENTRAL_BANKS, 1),
            "<CLUB>": rng.sample(CITY_CLUBS, 2) + rng.sample(OTHER_CLUBS, 2),
            "<CITY>": rng.sample(CITIES, 2),
            "<COUNTRY>": rng.sample(COUNTRIES, 2),
        }
        self.mentioned: Set[str] = set()
        self.unused_templates = list(TEMPLATES[topic])

    def dateline(self, sent_id: str) -> Sentence:
        city = self.rng.choice(self.cast["<CITY>"]).split()
        date = f"1996-{self.rng.randint(1, 12):02d}-{self.rng.randint(1, 28):02d}"
        return Sentence(sent_id, city + [date], [(0, len(city), "LOC")], set())

    def sentence(self, sent_id: str, seen: Set[Tuple[str, ...]]) -> Sentence:
        """A sentence from a template the document has not used yet, with tokens
        that are not in `seen` yet."""
        while True:
            mentioned = set(self.mentioned)
            template = self.rng.choice(self.unused_templates)
            sentence = self._fill(sent_id, template, mentioned)
            if tuple(sentence.tokens) not in seen:
                seen.add(tuple(sentence.tokens))
                self.mentioned = mentioned
                self.unused_templates.remove(template)
                return sentence

    def _fill(self, sent_id: str, template: str, mentioned: Set[str]) -> Sentence:
        tokens: List[str] = []
        spans: List[Span] = []
        club_city: Set[int] = set()
        used: Set[str] = set()
        for slot in template.split():
            if slot in ENTITY_SLOTS:
                name = self._entity(slot, used, mentioned)
                if slot == "<CLUB>" and name in CITY_CLUBS:
                    club_city.add(len(spans))
                spans.append((len(tokens), len(tokens) + len(name.split()), ENTITY_SLOTS[slot]))
                tokens.extend(name.split())
            else:
                tokens.extend(self._word(slot).split())
        return Sentence(sent_id, tokens, spans, club_city)

    def _entity(self, slot: str, used: Set[str], mentioned: Set[str]) -> str:
        """A name for `slot`, preferring the document's cast and never repeating
        a name within the sentence."""
        cast = [name for name in self.cast.get(slot, []) if name not in used]
        if cast:
            name = self.rng.choice(cast)
        elif slot == "<PER>":
            name = self._person()
        else:
            name = self.rng.choice([name for name in self.pools[slot] if name not in used])
        used.add(name)
        if slot != "<PER>":
            return name
        if name in mentioned and self.rng.random() < 0.6:
            return name.split(" ", 1)[1]  # later mentions often use the surname only
        mentioned.add(name)
        return name

    def _person(self) -> str:
        return f"{self.rng.choice(FIRST_NAMES)} {self.rng.choice(LAST_NAMES)}"

    def _word(self, slot: str) -> str:
        rng = self.rng
        fillers = {
            "<DAY>": lambda: rng.choice(DAYS),
            "<MONTH>": lambda: rng.choice(MONTHS),
            "<NUM>": lambda: str(rng.randint(2, 95)),
            "<BIG>": lambda: f"{rng.randint(1, 60)},{rng.randint(0, 999):03d}",
            "<PCT>": lambda: f"{rng.randint(1, 30)}.{rng.randint(0, 9)}",
            "<SCORE>": lambda: "{0}-{1}".format(*sorted(rng.sample(range(6), 2), reverse=True)),
            "<DRAW>": lambda: "{0}-{0}".format(rng.randint(0, 3)),
            "<GOALS>": lambda: str(rng.randint(0, 4)),
            "<MIN>": lambda: str(rng.randint(3, 89)),
            "<AGE>": lambda: str(rng.randint(19, 71)),
            "<YEAR>": lambda: str(rng.randint(1997, 2001)),
        }
        return fillers[slot]() if slot in fillers else slot


def make_split(split: str, seed: int, seen: Set[Tuple[str, ...]]) -> List[List[Sentence]]:
    """Documents of 5-10 sentences until the split reaches its size; no sentence
    repeats one already in `seen` (shared across splits)."""
    rng = random.Random(f"{seed}-{split}")
    topics, weights = zip(*TOPIC_WEIGHTS.items())
    documents: List[List[Sentence]] = []
    n_sents = 0
    while n_sents < SPLIT_SIZES[split]:
        doc_idx = len(documents)
        writer = DocumentWriter(rng, rng.choices(topics, weights)[0])
        document = [writer.dateline(f"demo_{split}_{doc_idx}_0")]
        for sent_idx in range(1, rng.randint(5, 10)):
            document.append(writer.sentence(f"demo_{split}_{doc_idx}_{sent_idx}", seen))
        documents.append(document)
        n_sents += len(document)
    return documents


def inject_systematic(documents: List[List[Sentence]], rng: random.Random) -> List[dict]:
    """Label city-named clubs as LOC throughout a few football documents."""
    candidates = [doc for doc in documents if any(sent.club_city for sent in doc)]
    changes = []
    for doc in rng.sample(candidates, min(N_SYSTEMATIC_DOCS, len(candidates))):
        for sent in doc:
            for i in sorted(sent.club_city):
                start, end, _ = sent.gold[i]
                sent.noisy[i] = (start, end, "LOC")
                changes.append(_change(sent, "systematic_club_as_loc", sent.gold[i], sent.noisy[i]))
    return changes


def inject_random(documents: List[List[Sentence]], rng: random.Random) -> List[dict]:
    """One mistake in each of a few sentences outside the documents that carry
    the systematic error."""
    clean_docs = [doc for doc in documents if all(sent.noisy == sent.gold for sent in doc)]
    pool = [sent for doc in clean_docs for sent in doc if len(sent.tokens) > 4 and len(sent.gold) > len(sent.club_city)]
    rng.shuffle(pool)
    changes = []
    for kind, count in RANDOM_ERRORS.items():
        made = 0
        while made < count:
            sent = pool.pop()
            i = rng.choice([i for i in range(len(sent.gold)) if i not in sent.club_city])
            noisy = _corrupt(sent, i, kind, rng)
            if noisy is not None or kind == "missing_entity":
                sent.noisy = [span for j, span in enumerate(sent.noisy) if j != i]
                if noisy is not None:
                    sent.noisy = sorted(sent.noisy + [noisy])
                changes.append(_change(sent, kind, sent.gold[i], noisy))
                made += 1
    return changes


def _corrupt(sent: Sentence, i: int, kind: str, rng: random.Random) -> Optional[Span]:
    start, end, label = sent.gold[i]
    if kind == "wrong_type":
        return (start, end, rng.choice([other for other in ENTITY_TYPES if other != label]))
    if kind == "wrong_boundary":
        if end - start > 1:
            return (start + 1, end, label)
        if start > 0 and sent.tokens[start - 1].lower() == "the":
            return (start - 1, end, label)
    return None


def _change(sent: Sentence, kind: str, gold: Span, noisy: Optional[Span]) -> dict:
    return {
        "id": sent.id,
        "kind": kind,
        "gold": list(gold),
        "noisy": list(noisy) if noisy else None,
        "text": " ".join(sent.tokens[gold[0] : gold[1]]),
    }


def write_jsonl(path: Path, records: Sequence[dict]) -> None:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf8")


def summarize(split: str, documents: List[List[Sentence]]) -> str:
    sents = [sent for doc in documents for sent in doc]
    labels = Counter(label for sent in sents for _, _, label in sent.gold)
    empty = sum(not sent.gold for sent in sents)
    counts = ", ".join(f"{label} {labels[label]}" for label in ENTITY_TYPES)
    return f"{split:5s}: {len(documents)} docs, {len(sents)} sentences ({empty} without entities); {counts}"


def main(output_dir: Path, seed: int) -> None:
    seen: Set[Tuple[str, ...]] = set()
    splits = {split: make_split(split, seed, seen) for split in SPLIT_SIZES}
    rng = random.Random(f"{seed}-errors")
    changes = inject_systematic(splits["train"], rng) + inject_random(splits["train"], rng)
    train = [sent for doc in splits["train"] for sent in doc]
    outputs = {
        **{
            f"{split}.jsonl": [sent.record(sent.noisy) for doc in docs for sent in doc]
            for split, docs in splits.items()
        },
        "train_corrected.jsonl": [sent.record(sent.gold) for sent in train],
        "injected_errors.jsonl": changes,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, records in outputs.items():
        write_jsonl(output_dir / name, records)
    for split, documents in splits.items():
        print(summarize(split, documents))
    print_error_summary(changes)
    print(f"wrote {', '.join(outputs)} to {output_dir}")


def print_error_summary(changes: List[dict]) -> None:
    kinds = Counter(change["kind"] for change in changes)
    doc_ids = {change["id"].rsplit("_", 1)[0] for change in changes if change["kind"] == "systematic_club_as_loc"}
    doc_ids = sorted(doc_ids, key=lambda doc_id: int(doc_id.rsplit("_", 1)[1]))
    print(f"injected into train: {len(changes)} wrong spans in {len({change['id'] for change in changes})} sentences")
    print(
        f"  systematic_club_as_loc: {kinds['systematic_club_as_loc']} mentions "
        f"in {len(doc_ids)} docs ({', '.join(doc_ids)})"
    )
    for kind in RANDOM_ERRORS:
        print(f"  {kind}: {kinds[kind]} sentences")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.output_dir, args.seed)
