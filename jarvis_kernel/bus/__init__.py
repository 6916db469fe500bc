"""The bus between the kernel and its workers: Redis, or in memory for one process."""

from .base import Bus, Message, StreamEntry, Subscription, Tx

__all__ = ["Bus", "Message", "StreamEntry", "Subscription", "Tx"]
