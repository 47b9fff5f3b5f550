"""List prices in USD per million tokens, for spend estimates (update when prices change).

Cache writes (5-minute TTL) cost 1.25x input, cache reads 0.1x input; the Message Batches
API halves every price. An unknown model is priced at the most expensive tier, so that a
spend limit errs on the safe side.
"""

from __future__ import annotations

# model prefix -> (input, output) USD per million tokens
PRICES = {
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-3-7-sonnet": (3.0, 15.0),
    "claude-haiku-4": (1.0, 5.0),
    "claude-3-5-haiku": (0.8, 4.0),
}
UNKNOWN_MODEL_PRICE = (15.0, 75.0)
CACHE_WRITE_FACTOR = 1.25
CACHE_READ_FACTOR = 0.1
BATCH_FACTOR = 0.5


def price_of(model: str) -> tuple[float, float]:
    """(input, output) per million tokens for the longest matching model prefix."""
    matches = [prefix for prefix in PRICES if model.startswith(prefix)]
    if not matches:
        return UNKNOWN_MODEL_PRICE
    return PRICES[max(matches, key=len)]


def cost_usd(model: str, input_tokens: int, output_tokens: int, cache_write: int = 0,
             cache_read: int = 0, batch: bool = False) -> float:
    inp, out = price_of(model)
    total = (input_tokens * inp + output_tokens * out + cache_write * inp * CACHE_WRITE_FACTOR
             + cache_read * inp * CACHE_READ_FACTOR) / 1e6
    return total * (BATCH_FACTOR if batch else 1.0)
