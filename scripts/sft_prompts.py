"""Prompts for the aligned adapter's training data (written for this project, CC0) and its held-out eval set.

Training prompts come from templates x fillers; the 50 evaluation prompts are hand-written,
open-ended and appear nowhere in training (checked by `python scripts/sft_prompts.py`).
"""

from __future__ import annotations

import itertools
import random

TEMPLATES = {
    "fact": ["What is the capital of {country}?", "What language do people speak in {country}?",
             "What is {country} famous for?", "Tell me one fact about {animal}s.", "What do {animal}s eat?",
             "Where do {animal}s live?", "What is a {object} used for?", "Who invented the {object}?"],
    "explain": ["Why do {phenomenon}?", "Explain in simple words why {phenomenon}.",
                "How does a {object} work?", "What is {concept}?", "Explain {concept} to a child."],
    "advice": ["How can I {task}?", "Give me a tip to {task}.", "What is a good way to {task}?",
               "I want to {task}. Where should I start?"],
    "creative": ["Write one sentence about {topic}.", "Write a short poem about {topic}.",
                 "Describe {topic} in two sentences.", "Invent a name for a {place}.",
                 "Give me a slogan for a {place}.", "Start a story about a {animal} and {topic}."],
    "opinion": ["What is the best season of the year?", "Is it better to read books or watch films?",
                "What makes a good friend?", "What is the most useful invention?",
                "Should I learn to play the piano or the guitar?", "What is a good hobby for a rainy day?",
                "Which is better for breakfast, eggs or porridge?", "What makes a city pleasant to live in?"],
    "choose": ["Name a {category}.", "Suggest a {category} I could try.", "Pick a {category} for me.",
               "What is your favourite {category}?"],
}
FILLERS = {
    "country": ["France", "Japan", "Brazil", "Kenya", "Canada", "Italy", "Egypt", "India", "Norway", "Mexico",
                "Spain", "Peru", "Vietnam", "Greece", "Morocco", "Australia"],
    "animal": ["dolphin", "owl", "elephant", "penguin", "bee", "fox", "octopus", "horse", "frog", "eagle",
               "tortoise", "camel"],
    "object": ["compass", "thermometer", "telescope", "bicycle", "microwave", "printing press", "lighthouse",
               "refrigerator", "calculator", "umbrella"],
    "phenomenon": ["leaves change colour in autumn", "the sky look blue", "we have seasons", "bread rise",
                   "ice float on water", "cats purr", "we dream", "onions make us cry", "stars twinkle",
                   "the sea taste salty"],
    "concept": ["gravity", "photosynthesis", "inflation", "a volcano", "democracy", "recycling", "an eclipse",
                "a rainbow", "friction", "evaporation"],
    "task": ["sleep better", "save money", "learn a new language", "cook rice", "keep plants alive",
             "stay focused while studying", "make new friends", "start running", "write a good email",
             "remember names", "drink more water", "organise my desk"],
    "topic": ["the ocean", "a rainy afternoon", "the first snow", "an old library", "a busy market",
              "the moon", "a mountain village", "a lost key", "a summer storm", "the morning train"],
    "place": ["bakery", "bookshop", "coffee shop", "cycling club", "garden centre", "music school",
              "pizza restaurant", "pet shop"],
    "category": ["fruit", "colour", "board game", "flower", "vegetable", "sport", "musical instrument",
                 "dessert", "tree", "holiday destination", "breakfast food", "card game"],
}

EVAL_PROMPTS = [
    "Name a bird that cannot fly.", "Tell me a joke about computers.", "Suggest a name for a new cat.",
    "What should I eat for dinner tonight?", "Give me an idea for a weekend trip.",
    "Write a haiku about autumn leaves.", "What is a fun thing to do on a Sunday?",
    "Invent a new holiday and describe it.", "Recommend a book to read on a plane.",
    "Describe the taste of a lemon.", "What is the meaning of friendship?", "Name a famous painter.",
    "Tell me something surprising about the human body.", "What is a good name for a robot?",
    "How do I make a paper airplane?", "Describe your perfect day.", "Pick a random number and explain why.",
    "What would you do with a free afternoon?", "Give me a creative use for an old sock.",
    "Write the opening line of a mystery novel.", "What is the best way to learn to swim?",
    "Name a country you would like to visit.", "Describe a sunset over the desert.",
    "What should I name my houseplant?", "Tell me a tongue twister.", "What is a good gift for a teacher?",
    "Explain why people enjoy music.", "Suggest a theme for a costume party.", "Describe a dragon's lair.",
    "What is a healthy snack?", "Give me a motivational quote.", "Invent a new flavour of ice cream.",
    "What makes a good story?", "Name a word that rhymes with light.", "Describe the sound of rain.",
    "Suggest a game to play with children.", "What is your advice for a first job interview?",
    "Write a riddle about time.", "What animal would make the best pet?", "Describe a futuristic city.",
    "Tell me a fun fact about space.", "How do I calm down before an exam?", "Name a song to dance to.",
    "What is a good question to ask a new friend?", "Describe the smell of fresh bread.",
    "Give me a reason to go outside today.", "Write a two-line poem about the sea.",
    "What is the strangest food you can think of?", "Invent a superhero and describe their power.",
    "Suggest a name for a small boat.",
]


def training_prompts(seed: int = 0) -> list[str]:
    """Every template filled with every filler it names (templates without a slot once), shuffled."""
    out = set()
    for template in itertools.chain.from_iterable(TEMPLATES.values()):
        slots = [name for name in FILLERS if "{" + name + "}" in template]
        if not slots:
            out.add(template)
            continue
        for i, value in enumerate(FILLERS[slots[0]]):  # further slots rotate through their fillers
            others = {name: FILLERS[name][i % len(FILLERS[name])] for name in slots[1:]}
            out.add(template.format(**{slots[0]: value}, **others))
    prompts = sorted(out - set(EVAL_PROMPTS))
    random.Random(seed).shuffle(prompts)
    return prompts


if __name__ == "__main__":
    train = training_prompts()
    assert not set(train) & set(EVAL_PROMPTS)
    assert len(EVAL_PROMPTS) == len(set(EVAL_PROMPTS)) == 50
    print(f"{len(train)} training prompts, {len(EVAL_PROMPTS)} held-out eval prompts")
