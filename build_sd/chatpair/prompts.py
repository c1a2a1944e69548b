"""Seeded, diverse instruction-like user prompts for distilling the chat draft, with a held-out split.

Prompts are template families x subjects. A family is one kind of request (explain, list tips, write
an email, write a Python function, ...) with several phrasings; subjects come from pools (general
topics, dishes, code tasks, sentences to summarise or translate, factual questions).

Held-out prompts must be unseen in training *as kinds*, not only as strings, otherwise alpha on them
measures memorisation. So whole families and whole subjects are held out by a stable hash (sha1 of the
name, not Python's salted hash): a training prompt uses a train family AND a train subject; every
held-out evaluation prompt uses a held-out subject (and half of them also a held-out family).

`--all-families-from K` lets training prompts K.. come from every family: the draft then learns the
kinds of request it is judged on (explain, facts, letter, poem: the ones the chat demo asks), still on
other subjects, so no held-out prompt is ever seen. The held-out families then measure unseen subjects,
no longer unseen kinds; the model card gives alpha on both halves.

    python -m build_sd.chatpair prompts [--out build/chatpair]   # train_prompts.txt, heldout.txt
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

# ---- subject pools -------------------------------------------------------------------------------
TOPICS = """photosynthesis; black holes; the water cycle; climate change; volcanoes; earthquakes; plate tectonics;
the immune system; vaccines; DNA; evolution; the human heart; sleep; dreams; memory; meditation; stress;
nutrition; vitamins; exercise; yoga; running; swimming; cycling; chess; football; basketball; tennis; the Olympics;
the Roman Empire; ancient Egypt; the Renaissance; the Industrial Revolution; the printing press; the French Revolution;
the Cold War; the Moon landing; the internet; email; social media; smartphones; artificial intelligence;
machine learning; neural networks; quantum computing; cryptography; blockchain; cloud computing; open source software;
the Linux kernel; databases; computer viruses; passwords; privacy online; video games; virtual reality; robots;
self-driving cars; electric cars; solar power; wind energy; nuclear power; batteries; recycling; plastic pollution;
deforestation; coral reefs; the Amazon rainforest; deserts; glaciers; rivers; oceans; tides; rainbows; lightning;
hurricanes; tornadoes; snow; the seasons; the Sun; the Moon; Mars; Jupiter; Saturn's rings; comets; the Milky Way;
telescopes; gravity; magnetism; electricity; light; sound; heat; friction; atoms; chemical reactions; acids and bases;
the periodic table; water; oxygen; carbon; metals; glass; paper; cotton; wool; coffee; tea; chocolate; bread; cheese;
honey; bees; ants; butterflies; spiders; birds; owls; penguins; eagles; whales; dolphins; sharks; octopuses; elephants;
lions; tigers; wolves; dogs; cats; horses; cows; chickens; frogs; snakes; dinosaurs; trees; flowers; mushrooms; cacti;
gardening; composting; houseplants; cooking at home; baking; fermentation; table manners; friendship; kindness;
honesty; patience; gratitude; curiosity; creativity; leadership; teamwork; public speaking; negotiation; time management;
procrastination; habits; goal setting; learning a language; reading books; libraries; writing a diary; poetry; music;
the piano; the guitar; jazz; classical music; painting; photography; sculpture; architecture; bridges; skyscrapers;
castles; museums; theatre; cinema; animation; comics; fairy tales; mythology; Greek myths; folk dances; festivals;
birthdays; weddings; holidays; travelling by train; air travel; camping; hiking; mountains; islands; cities; villages;
public transport; traffic; maps; compasses; clocks; calendars; money; banks; saving money; budgeting; taxes; inflation;
the stock market; small businesses; marketing; customer service; job interviews; remote work; office meetings;
teachers; schools; homework; exams; universities; scientists; doctors; nurses; firefighters; farmers; chefs; pilots;
astronauts; volunteers; elections; democracy; human rights; laws; courts; newspapers; advertising; fashion; shoes;
colours; shapes; numbers; prime numbers; fractions; geometry; statistics; probability; algorithms; sorting;
recursion; variables in programming; debugging; version control; spreadsheets; keyboards; printers; the weather forecast;
first aid; hand washing; drinking water; breakfast; lunch breaks; walking; stairs; elevators; umbrellas; bicycles;
kites; balloons; fireworks; candles; lighthouses; ships; submarines; trains; rockets; satellites; GPS; radio;
television; the telephone; cameras; microscopes; thermometers; vaccines for pets; zoos; national parks; beaches;
sand; salt; sugar; rice; potatoes; apples; bananas; oranges; tomatoes; lemons; strawberries; carrots; onions""".replace("\n", " ")

DISHES = """pancakes; an omelette; tomato soup; a green salad; guacamole; hummus; banana bread; chocolate chip cookies;
a vegetable stir-fry; spaghetti carbonara; lentil soup; a fruit smoothie; French toast; mashed potatoes; fried rice;
a simple curry; scrambled eggs; lemonade; a cheese sandwich; roasted vegetables; apple pie; pizza dough; a bean chili;
overnight oats; pesto pasta; a tuna salad; potato salad; rice pudding; a mushroom risotto; garlic bread; a fruit salad;
vegetable soup; chicken noodle soup; hot chocolate; iced tea; a quiche; tacos; a burrito bowl; pumpkin soup; muffins;
a carrot cake; falafel; a Greek salad; pasta salad; a grilled cheese sandwich; baked potatoes; popcorn; a milkshake""".replace("\n", " ")

CODE_TASKS = """reverses a string; checks whether a number is prime; returns the factorial of n; computes the n-th Fibonacci number;
counts the vowels in a string; finds the largest number in a list; removes duplicates from a list while keeping order;
checks whether a word is a palindrome; converts Celsius to Fahrenheit; sums the digits of an integer;
returns the average of a list of numbers; merges two sorted lists; counts how often each word occurs in a text;
capitalises the first letter of every word; checks whether a year is a leap year; returns the second largest number in a list;
flattens a nested list; computes the greatest common divisor of two numbers; converts a binary string to an integer;
checks whether two strings are anagrams; returns the median of a list; splits a list into chunks of size n;
finds the longest word in a sentence; rotates a list by k positions; checks whether a list is sorted;
returns all even numbers from a list; computes the power set of a small list; validates a simple email address;
counts the lines in a text file; reads a CSV file into a list of dictionaries; returns the intersection of two lists;
converts a list of tuples into a dictionary; computes the area of a circle; generates a random password;
returns the n smallest items of a list; implements binary search; implements bubble sort; transposes a matrix;
computes the dot product of two vectors; converts seconds into hours, minutes and seconds""".replace("\n", " ")

SENTENCES = """The meeting has been moved to Thursday afternoon because the manager is travelling.;
Our library will stay open until nine in the evening during the exam period.;
The new bridge across the river reduced travel times for thousands of commuters every day.;
Scientists found that the small fish can survive in water that is much colder than expected.;
After three weeks of rain the farmers were finally able to harvest the wheat.;
The museum is looking for volunteers who can guide visitors on weekends.;
Regular exercise and enough sleep help students concentrate better in class.;
The company announced that it will switch all its delivery vans to electric ones by next year.;
The old lighthouse was restored by local residents and is now a small museum.;
Please remember to bring a water bottle and comfortable shoes to the hike on Saturday.;
The train was delayed by forty minutes because of a signal failure near the station.;
Many birds migrate thousands of kilometres each year to find food and warmer weather.;
The bakery on the corner sells fresh bread every morning from seven o'clock.;
Children who read every day usually develop a larger vocabulary.;
The city council decided to plant two hundred new trees along the main street.;
My sister is learning to play the violin and practises every evening after dinner.;
The weather forecast says it will be sunny tomorrow with a light breeze.;
The software update fixes several bugs and makes the app start faster.;
Our team finished the project two days before the deadline.;
The concert was cancelled because the singer had lost her voice.;
Tourists visit the small village to see its colourful wooden houses.;
I would like to book a table for four people at eight o'clock.;
The cat sleeps on the windowsill whenever the sun is shining.;
Drinking enough water is important, especially on hot days.;
The students planted vegetables in the school garden this spring.;
He forgot his umbrella at home and got wet on the way to work.;
The hotel offers free breakfast and a shuttle to the airport.;
Where is the nearest pharmacy, please?;
The price of coffee has risen sharply over the last year.;
We are going to visit our grandparents next weekend.""".replace("\n", " ")

QUESTIONS = """What is the capital of France?; How many legs does a spider have?; Why is the sky blue?;
What is the boiling point of water at sea level?; Who wrote Romeo and Juliet?; How many days are there in a leap year?;
What is the largest planet in the solar system?; What do bees make?; What is the chemical symbol for gold?;
How many continents are there?; Why do leaves change colour in autumn?; What is the speed of light?;
What is the tallest mountain in the world?; How does a rainbow form?; What language is spoken in Brazil?;
Why do we have seasons?; What is the freezing point of water in Fahrenheit?; What is the longest river in Africa?;
How many hours are there in a week?; What gas do plants absorb from the air?; Who painted the Mona Lisa?;
What is the smallest prime number?; Why does the Moon have phases?; What is the main ingredient of guacamole?;
How many strings does a standard guitar have?; What is an adjective?; What is the difference between weather and climate?;
Which animal is known as the king of the jungle?; How many sides does a hexagon have?; What is the largest ocean on Earth?;
What causes thunder?; Why do cats purr?; What is the square root of 144?; Which planet is called the Red Planet?;
What does a thermometer measure?; How long does it take the Earth to orbit the Sun?; What is a noun?;
What is the currency of Japan?; Why is exercise good for the heart?; What is the capital of Canada?""".replace("\n", " ")

LANGS = ["French", "Spanish", "German", "Italian"]


def _pool(text: str) -> list[str]:
    return [s.strip() for s in text.split(";") if s.strip()]


# ---- template families ---------------------------------------------------------------------------
# family -> (pool name, phrasings). {x} is the subject; {lang} a target language.
FAMILIES: dict[str, tuple[str, list[str]]] = {
    "explain": ("topic", ["Explain {x} in simple terms.", "Can you explain {x} to me?", "Explain how {x} works.",
                          "What is {x}? Explain briefly."]),
    "describe": ("topic", ["Describe {x}.", "Give me a short description of {x}.", "Describe {x} in a few sentences."]),
    "tips": ("topic", ["Give me some tips about {x}.", "List five tips related to {x}.",
                       "What are some practical tips for someone interested in {x}?"]),
    "facts": ("topic", ["Tell me three interesting facts about {x}.", "List some fun facts about {x}.",
                        "What are the most important facts about {x}?"]),
    "compare": ("pair", ["Compare {x} and {y}.", "What are the differences between {x} and {y}?",
                         "How are {x} and {y} similar and how are they different?"]),
    "poem": ("topic", ["Write a short poem about {x}.", "Write a haiku about {x}.", "Write a four-line poem about {x}."]),
    "story": ("topic", ["Write a short story about {x}.", "Tell me a short story involving {x}.",
                        "Write a very short children's story about {x}."]),
    "email": ("topic", ["Write a short email to a friend about {x}.", "Write a polite email to my teacher asking about {x}.",
                        "Write a short email inviting my colleagues to a talk about {x}."]),
    "kid": ("topic", ["Explain {x} to a five-year-old.", "How would you explain {x} to a child?"]),
    "pros_cons": ("topic", ["What are the advantages and disadvantages of {x}?", "List the pros and cons of {x}."]),
    "history": ("topic", ["Give a brief history of {x}.", "How has {x} changed over time?"]),
    "why": ("topic", ["Why is {x} important?", "Why should people care about {x}?"]),
    "summarise": ("sentence", ["Summarise this sentence in a few words: {x}", "Summarize the following: {x}",
                               "Rewrite this sentence more simply: {x}"]),
    "translate": ("sentence", ["Translate into {lang}: {x}", "How do you say this in {lang}? {x}",
                               "Translate the following sentence to {lang}: {x}"]),
    "question": ("question", ["{x}", "Quick question: {x}", "Please answer briefly: {x}"]),
    "python": ("code", ["Write a Python function that {x}.", "Write a small Python function that {x}, with a docstring.",
                        "Show me Python code for a function that {x}."]),
    "code_explain": ("code", ["How would I write a program that {x}? Explain the idea.",
                              "Describe an algorithm that {x}."]),
    "recipe": ("dish", ["Give me a simple recipe for {x}.", "How do I make {x}?", "What ingredients do I need for {x}?"]),
    "slogan": ("topic", ["Write a catchy slogan about {x}.", "Suggest three titles for an article about {x}."]),
    "quiz": ("topic", ["Write three quiz questions about {x} with answers.", "Make a short quiz about {x}."]),
    "plan": ("topic", ["Make a one-week plan to learn about {x}.", "How can a beginner get started with {x}?"]),
    "opinion": ("topic", ["What do you think about {x}?", "Is {x} overrated? Give a balanced answer."]),
    "dialogue": ("topic", ["Write a short dialogue between two friends about {x}.",
                           "Write a short conversation between a teacher and a student about {x}."]),
    "letter": ("topic", ["Write a short thank-you note mentioning {x}.", "Write a short product description related to {x}."]),
}


def _h(kind: str, name: str) -> float:
    """Stable value in [0, 1) for a name (sha1, so the split never changes between runs or machines)."""
    return int(hashlib.sha1(f"{kind}:{name}".encode()).hexdigest()[:8], 16) / 2**32


HELD_FAMILY_FRAC = 0.17   # ~4 of 24 families
HELD_SUBJECT_FRAC = 0.15


def held_family(f: str) -> bool:
    return _h("family", f) < HELD_FAMILY_FRAC


def held_subject(s: str) -> bool:
    return _h("subject", s) < HELD_SUBJECT_FRAC


def pools() -> dict[str, list[str]]:
    return {"topic": _pool(TOPICS), "dish": _pool(DISHES), "code": _pool(CODE_TASKS),
            "sentence": _pool(SENTENCES), "question": _pool(QUESTIONS)}


def _render(rng: random.Random, family: str, subjects: dict[str, list[str]]) -> tuple[str, list[str]]:
    """One prompt of `family` from `subjects` (already restricted to one split); also its subjects."""
    pool, phrasings = FAMILIES[family]
    t = rng.choice(phrasings)
    if pool == "pair":
        x, y = rng.sample(subjects["topic"], 2)
        return t.format(x=x, y=y), [x, y]
    x = rng.choice(subjects[pool])
    return t.format(x=x, lang=rng.choice(LANGS)), [x]


def split_subjects(held: bool) -> dict[str, list[str]]:
    return {k: [s for s in v if held_subject(s) == held] for k, v in pools().items()}


def train_prompts(n: int, seed: int = 0, all_families_from: int | None = None) -> list[str]:
    """n distinct training prompts (train subjects only), in a seeded order: train families only,
    or, from index `all_families_from` on, every family (the held-out ones included: a user asks
    "explain X" too, and the draft had never seen that kind of request; the held-out prompts stay
    unseen, as every one of them uses a held-out subject). The first `all_families_from` prompts are
    the same as without it, so the shards made from them stay valid."""
    k = n if all_families_from is None else min(n, all_families_from)
    out = _distinct(k, random.Random(seed), sorted(f for f in FAMILIES if not held_family(f)), set())
    if k < n:
        # A separate stream (seed + 1000), deduplicated against the first part and balanced across
        # families: a uniform draw of distinct prompts ends up mostly "Compare x and y" / questions,
        # whose subject pairs never run out, while the small families (a few phrasings x the topics)
        # do. Reversed, so the balanced part is at the END, where on-policy shards take their prompts.
        out += _balanced(n - k, random.Random(seed + 1000), sorted(FAMILIES), set(out))[::-1]
    return out


def _distinct(n: int, rng: random.Random, fams: list[str], seen: set[str]) -> list[str]:
    subj = split_subjects(False)
    out, tries = [], 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        p, _ = _render(rng, rng.choice(fams), subj)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _balanced(n: int, rng: random.Random, fams: list[str], seen: set[str]) -> list[str]:
    """n distinct prompts, families taken in turn (a shuffled order each round); a family that gives
    no new prompt in 200 draws has run out and leaves the rotation."""
    subj = split_subjects(False)
    live, out = list(fams), []
    while len(out) < n and live:
        rng.shuffle(live)
        for f in list(live):
            for _ in range(200):
                p, _ = _render(rng, f, subj)
                if p not in seen:
                    seen.add(p)
                    out.append(p)
                    break
            else:
                live.remove(f)
            if len(out) == n:
                break
    return out


def heldout_prompts(n: int = 40, seed: int = 1) -> list[str]:
    """n evaluation prompts: all on held-out subjects; half also from held-out families."""
    return heldout_with_families(n, seed)[0]


def heldout_with_families(n: int = 40, seed: int = 1) -> tuple[list[str], list[bool]]:
    """heldout_prompts and, for each, whether its family is a held-out one (the even ones: the
    chat demo asks those and calibrates on the others, demo/chat.py)."""
    rng = random.Random(seed)
    subj = split_subjects(True)
    held_f = sorted(f for f in FAMILIES if held_family(f))
    train_f = sorted(f for f in FAMILIES if not held_family(f))
    out, seen, flags = [], set(), []
    i = 0
    while len(out) < n:
        fams = held_f if i % 2 == 0 else train_f
        f = fams[(i // 2) % len(fams)]
        i += 1
        pool = FAMILIES[f][0]
        need = 2 if pool == "pair" else 1
        if len(subj["topic" if pool == "pair" else pool]) < need:
            continue
        p, _ = _render(rng, f, subj)
        if p not in seen:
            seen.add(p)
            out.append(p)
            flags.append(held_family(f))
    return out, flags


def write(out: Path, n_train: int = 20000, n_heldout: int = 40, seed: int = 0,
          all_families_from: int | None = None) -> tuple[Path, Path]:
    """Write train_prompts.txt and heldout.txt (one prompt per line) under `out`; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    tr = train_prompts(n_train, seed, all_families_from)
    ho = heldout_prompts(n_heldout, seed + 1)
    assert not set(tr) & set(ho)
    ptr, pho = out / "train_prompts.txt", out / "heldout.txt"
    ptr.write_text("\n".join(tr) + "\n")
    pho.write_text("\n".join(ho) + "\n")
    # how they were made, for the model card's Reproduce section (export.py)
    (out / "prompts.json").write_text(json.dumps(dict(n_train=n_train, n_heldout=n_heldout, seed=seed,
                                                      all_families_from=all_families_from)) + "\n")
    return ptr, pho


def describe() -> str:
    p = pools()
    hf = sorted(f for f in FAMILIES if held_family(f))
    lines = [f"families: {len(FAMILIES)} ({len(hf)} held out: {', '.join(hf)})"]
    for k, v in p.items():
        lines.append(f"pool {k}: {len(v)} subjects, {sum(map(held_subject, v))} held out")
    return "\n".join(lines)
