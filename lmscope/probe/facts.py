"""Fact tables behind the built-in truth datasets, written for lmscope (facts, not copied text).

Each table maps an entity to its true value. The statement generators in
`datasets.py` pair each entity with its true value and with a wrong one, so
every entity yields one true and one false statement. Keep entries to facts a
small model has a fair chance of knowing: Marks & Tegmark (2023) found linear
truth structure mainly for facts the model actually holds.
"""

from __future__ import annotations

# city -> country (well-known cities; several per country so false pairings stay plausible)
CITIES: dict[str, str] = {
    "Paris": "France", "Lyon": "France", "Marseille": "France", "Toulouse": "France",
    "Berlin": "Germany", "Munich": "Germany", "Hamburg": "Germany", "Frankfurt": "Germany",
    "Rome": "Italy", "Milan": "Italy", "Naples": "Italy", "Venice": "Italy", "Florence": "Italy",
    "Madrid": "Spain", "Barcelona": "Spain", "Seville": "Spain", "Valencia": "Spain",
    "London": "the United Kingdom", "Manchester": "the United Kingdom", "Liverpool": "the United Kingdom",
    "Edinburgh": "the United Kingdom",
    "Tokyo": "Japan", "Osaka": "Japan", "Kyoto": "Japan",
    "Beijing": "China", "Shanghai": "China", "Shenzhen": "China",
    "Moscow": "Russia", "Saint Petersburg": "Russia",
    "New York": "the United States", "Los Angeles": "the United States", "Chicago": "the United States",
    "Houston": "the United States", "Boston": "the United States", "San Francisco": "the United States",
    "Toronto": "Canada", "Montreal": "Canada", "Vancouver": "Canada",
    "Sydney": "Australia", "Melbourne": "Australia", "Brisbane": "Australia",
    "Mumbai": "India", "Delhi": "India", "Bangalore": "India", "Kolkata": "India",
    "Cairo": "Egypt", "Alexandria": "Egypt",
    "Istanbul": "Turkey", "Ankara": "Turkey",
    "Lisbon": "Portugal", "Porto": "Portugal",
    "Amsterdam": "the Netherlands", "Rotterdam": "the Netherlands",
    "Vienna": "Austria", "Athens": "Greece", "Dublin": "Ireland", "Stockholm": "Sweden",
    "Oslo": "Norway", "Copenhagen": "Denmark", "Helsinki": "Finland", "Warsaw": "Poland",
    "Prague": "the Czech Republic", "Budapest": "Hungary", "Brussels": "Belgium",
    "Zurich": "Switzerland", "Geneva": "Switzerland",
    "Rio de Janeiro": "Brazil", "Sao Paulo": "Brazil", "Buenos Aires": "Argentina",
    "Mexico City": "Mexico", "Lima": "Peru", "Bogota": "Colombia", "Santiago": "Chile",
    "Seoul": "South Korea", "Bangkok": "Thailand", "Jakarta": "Indonesia", "Manila": "the Philippines",
    "Hanoi": "Vietnam", "Nairobi": "Kenya", "Lagos": "Nigeria", "Johannesburg": "South Africa",
    "Cape Town": "South Africa", "Tehran": "Iran", "Baghdad": "Iraq", "Karachi": "Pakistan",
}

# animal -> class (the kind of animal)
ANIMALS: dict[str, str] = {
    "dog": "mammal", "cat": "mammal", "horse": "mammal", "cow": "mammal", "whale": "mammal",
    "dolphin": "mammal", "elephant": "mammal", "lion": "mammal", "tiger": "mammal", "bat": "mammal",
    "mouse": "mammal", "rabbit": "mammal", "bear": "mammal", "monkey": "mammal", "sheep": "mammal",
    "eagle": "bird", "sparrow": "bird", "penguin": "bird", "owl": "bird", "parrot": "bird",
    "chicken": "bird", "duck": "bird", "crow": "bird", "swan": "bird", "ostrich": "bird",
    "shark": "fish", "salmon": "fish", "trout": "fish", "tuna": "fish", "cod": "fish",
    "goldfish": "fish", "carp": "fish",
    "snake": "reptile", "lizard": "reptile", "crocodile": "reptile", "turtle": "reptile",
    "tortoise": "reptile", "alligator": "reptile", "iguana": "reptile",
    "frog": "amphibian", "toad": "amphibian", "salamander": "amphibian", "newt": "amphibian",
    "ant": "insect", "bee": "insect", "butterfly": "insect", "beetle": "insect", "mosquito": "insect",
    "fly": "insect", "wasp": "insect", "grasshopper": "insect",
}

# Spanish word -> English translation (common words)
SPANISH: dict[str, str] = {
    "perro": "dog", "gato": "cat", "casa": "house", "agua": "water", "libro": "book",
    "mesa": "table", "silla": "chair", "sol": "sun", "luna": "moon", "rojo": "red",
    "verde": "green", "azul": "blue", "blanco": "white", "negro": "black", "grande": "big",
    "pequeño": "small", "hombre": "man", "mujer": "woman", "niño": "boy", "ciudad": "city",
    "pan": "bread", "leche": "milk", "fuego": "fire", "árbol": "tree", "flor": "flower",
    "caballo": "horse", "pájaro": "bird", "pescado": "fish", "coche": "car", "puerta": "door",
    "ventana": "window", "cielo": "sky", "tierra": "earth", "mano": "hand", "cabeza": "head",
    "corazón": "heart", "noche": "night", "día": "day", "año": "year", "escuela": "school",
}

_ONES = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TENS = {5: "fifty", 6: "sixty", 7: "seventy", 8: "eighty", 9: "ninety"}


def number_word(n: int) -> str:
    """51..99 as English words ('seventy-two'); multiples of ten are left out of the sets."""
    if not 51 <= n <= 99 or n % 10 == 0:
        raise ValueError(f"number words cover 51..99 without multiples of ten, got {n}")
    return f"{_TENS[n // 10]}-{_ONES[n % 10]}"


NUMBERS: list[int] = [n for n in range(51, 100) if n % 10]
