"""The DDQN's uniform replay buffer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ReplayBuffer:
    """Fixed-size ring buffer of transitions in preallocated numpy arrays."""

    capacity: int
    obs_dim: int
    obs: np.ndarray = field(init=False)
    actions: np.ndarray = field(init=False)
    rewards: np.ndarray = field(init=False)
    next_obs: np.ndarray = field(init=False)
    dones: np.ndarray = field(init=False)
    size: int = 0
    pos: int = 0

    def __post_init__(self) -> None:
        self.obs = np.zeros((self.capacity, self.obs_dim), np.float32)
        self.actions = np.zeros(self.capacity, np.int32)
        self.rewards = np.zeros(self.capacity, np.float32)
        self.next_obs = np.zeros((self.capacity, self.obs_dim), np.float32)
        self.dones = np.zeros(self.capacity, np.float32)

    def add_batch(
        self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray, dones: np.ndarray
    ) -> None:
        """Append a batch of transitions (overwriting the oldest when full)."""
        n = obs.shape[0]
        idx = (self.pos + np.arange(n)) % self.capacity
        self.obs[idx] = obs
        self.actions[idx] = actions
        self.rewards[idx] = rewards
        self.next_obs[idx] = next_obs
        self.dones[idx] = dones
        self.pos = int((self.pos + n) % self.capacity)
        self.size = int(min(self.capacity, self.size + n))

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        """``n`` transitions drawn uniformly with replacement."""
        i = rng.integers(0, self.size, size=n)
        return self.obs[i], self.actions[i], self.rewards[i], self.next_obs[i], self.dones[i]
