"""Write the causal-LM demo data (data/demo/llm_{train,dev,test}.jsonl): customer questions to a fictional
bookshop, Northwind Books, and the answers its support team writes, in its own style and with its own facts
(which a base model cannot know: what fine-tuning teaches). The system prompt is the run's (task.system_prompt in
examples/demo_llm.yaml), so training, evaluation and generation all put the same one first. Deterministic: `python scripts/make-demo-llm-data.py`.
"""

import json
import random
from pathlib import Path

OPENERS = ["", "Hi, ", "Hello! ", "Quick question: ", "Good morning. ", "Hey there, ", "Excuse me, "]
TOPICS = {
    "order_status": (["where is my order {order}?", "has order {order} shipped yet?", "what is the status of order {order}?",
                      "can you track order {order} for me?", "my order {order} has not arrived, where is it?"],
                     "Order {order} is on its way: you can follow it at northwind.example/track/{order}. "
                     "Orders arrive within 3 working days of shipping."),
    "returns": (["how do I return a book?", "can I send back a book I don't want?", "what is your return policy?",
                 "I want to return {title}, how?", "is it possible to get a refund for {title}?"],
                "Returns are free within 30 days: print the label at northwind.example/returns and drop the parcel "
                "at any post office. The refund reaches you within 5 working days."),
    "shipping": (["how long does delivery take?", "how much is shipping?", "do you ship abroad?",
                  "when will {title} arrive if I order today?", "what does delivery to {city} cost?"],
                 "Delivery takes 2 to 3 working days and is free over 25 euros (3.50 euros below). "
                 "We ship to every EU country."),
    "hours": (["when is the {city} shop open?", "what are your opening hours in {city}?", "is the {city} store open on Sunday?",
               "what time does the {city} shop close?"],
              "Our {city} shop is open Monday to Saturday, 9:00 to 19:00, and closed on Sundays."),
    "payment": (["which payment methods do you accept?", "can I pay with PayPal?", "do you take credit cards?",
                 "can I pay by bank transfer for {title}?"],
                "We accept Visa, Mastercard, PayPal and bank transfer; a transfer ships the order once the money arrives."),
    "gift_card": (["do you sell gift cards?", "how long is a gift card valid?", "can I use a gift card online?",
                   "my gift card {card} does not work, why?"],
                  "Northwind gift cards are valid for 3 years, online and in every shop. If a card is refused, "
                  "write to cards@northwind.example with its number."),
    "cancel": (["how do I cancel order {order}?", "can I still cancel order {order}?", "please cancel my order {order}",
                "I ordered {title} by mistake, can I cancel?"],
               "Orders can be cancelled until they ship: open northwind.example/orders and choose Cancel. "
               "Once shipped, return the parcel for free instead."),
    "address": (["can I change the delivery address of order {order}?", "I moved, how do I update my address?",
                 "order {order} has the wrong address, what can I do?"],
                "You can change the address until the order ships, under northwind.example/orders. "
                "After that, ask the courier to redirect it with the tracking link."),
    "damaged": (["{title} arrived damaged, what now?", "my book came with a torn cover", "the parcel for order {order} was crushed",
                 "pages are missing from {title}"],
                "Sorry about that! Send a photo to help@northwind.example with your order number and we will ship "
                "a new copy at once, free of charge."),
    "preorder": (["can I preorder {title}?", "when does {title} come out?", "do you take preorders?"],
                 "Yes: preorders are charged only when the book ships, and you get it on its release day."),
}
ORDERS_TRAIN = [f"NW-{n}" for n in range(10000, 10400, 7)]
ORDERS_HELD = [f"NW-{n}" for n in range(20000, 20400, 11)]
TITLES_TRAIN = ["The Hobbit", "Dune", "Emma", "Beloved", "Ulysses", "Middlemarch", "The Trial", "Persuasion"]
TITLES_HELD = ["Jane Eyre", "Solaris", "Neuromancer", "Rebecca"]
CITIES_TRAIN = ["Leeds", "Utrecht", "Lyon", "Porto", "Graz"]
CITIES_HELD = ["Ghent", "Bergen", "Turin"]


def conversations(n: int, rng: random.Random, orders, titles, cities) -> list[dict]:
    out = []
    for _ in range(n):
        question, answer = rng.choice(list(TOPICS.values()))
        slots = {"order": rng.choice(orders), "title": rng.choice(titles), "city": rng.choice(cities),
                 "card": f"{rng.randrange(1000, 9999)}-{rng.randrange(1000, 9999)}"}
        text = rng.choice(OPENERS) + rng.choice(question).format(**slots)
        out.append({"messages": [{"role": "user", "content": text[0].upper() + text[1:]},
                                 {"role": "assistant", "content": answer.format(**slots)}]})
    return out


def main() -> None:
    rng = random.Random(42)
    folder = Path(__file__).resolve().parent.parent / "data" / "demo"
    splits = {"train": conversations(320, rng, ORDERS_TRAIN, TITLES_TRAIN, CITIES_TRAIN),
              "dev": conversations(40, rng, ORDERS_HELD, TITLES_HELD, CITIES_HELD),
              "test": conversations(40, rng, ORDERS_HELD, TITLES_HELD, CITIES_HELD)}
    for name, rows in splits.items():
        seen, unique = set(), []
        for row in rows:  # the data stage would drop repeats anyway; the demo files hold none
            key = json.dumps(row)
            if key not in seen:
                seen.add(key)
                unique.append(row)
        (folder / f"llm_{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in unique))


if __name__ == "__main__":
    main()
