"""The medgate MQTT topic scheme (``P`` is ``mqtt.topic_prefix``, default ``medgate``).

Inbound, QoS 1:

- ``P/{site}/{ward}/{bed}/{device}/vitals`` — the full form: one bedside device per topic.
- ``P/{ward}/{bed}/vitals`` — the short form of a single-site installation (site and device
  unknown from the topic; the payload may name the device).
- ``P/adt`` — admission, transfer and discharge messages that associate devices with patients
  (schema ``iomt/schemas/adt.schema.json``).

Outbound, QoS 1:

- ``P/alerts/{ward}/{bed}`` — NEWS2 alerts (schema ``iomt/schemas/alert.schema.json``).
- ``P/deadletter`` — payloads that could not be used, with the reason.

Topic levels are matched by position only: a level may not contain ``/``, ``+`` or ``#``
(MQTT 3.1.1 section 4.7). MQTT allows a topic of up to 65,535 bytes and forbids only U+0000 in
it (section 1.5.3; other control characters are "SHOULD NOT"), so a broker may pass on what a
device sends. medgate refuses, as dead letters, vitals topics with a level longer than
:data:`MAX_LEVEL_CHARS` or holding an unsafe character (:mod:`kernel.text`: controls, format
characters such as the bidirectional overrides U+202A-U+202E and U+2066-U+2069, the line and
paragraph separators U+2028/U+2029): ward, bed and device names never need them, and they would
reach the database, the ward board and the logs.

With ``mqtt.shared_group`` set, the vitals and ADT filters are subscribed as
``$share/{group}/{filter}`` (MQTT 5.0 section 4.8.2; Mosquitto also offers it to
3.1.1 clients) so that several bridges split the messages between them.

Within one bridge, :meth:`Topics.partition` sends every message of one bed (site, ward, bed) to
the same worker: a bed's messages stay in order and its patient's state stays in one place.

Across bridge nodes, a :class:`Partition` (``iomt.partitions``) is a ward (``{ward}``: that ward
in the short form and at any site in the full form) or one site's ward (``{site}/{ward}``: the full
form only); each has a persistent MQTT session of its own (:mod:`iomt.partitions`).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

from kernel.text import describe_unsafe

VITALS_LEVEL = "vitals"
SHORT_FORM_LEVELS = 3  # {ward}/{bed}/vitals
FULL_FORM_LEVELS = 5  # {site}/{ward}/{bed}/{device}/vitals
SHARED_PREFIX = "$share"  # MQTT 5.0 section 4.8.2 shared subscriptions
LOCATION_CACHE_SIZE = 100_000  # topics whose location is remembered (one per bedside device)
MAX_LEVEL_CHARS = 128  # a site, ward, bed or device name; MQTT itself allows 65,535 bytes a topic


@dataclass(frozen=True)
class Location:
    """Where a message came from, as far as its topic says."""

    ward: str
    bed: str
    site: str | None = None
    device: str | None = None


class Topics:
    """Topic names and filters under one prefix.

    Parameters
    ----------
    prefix
        ``mqtt.topic_prefix``: one or more plain topic levels.
    shared_group
        ``mqtt.shared_group``: when set, subscriptions are shared by the workers of that group.
    """

    def __init__(self, prefix: str, shared_group: str | None = None) -> None:
        if not prefix or any(c in prefix for c in "+#") or prefix.startswith("/") \
                or prefix.endswith("/"):
            raise ValueError(f"prefix must be plain topic levels without wildcards, {prefix!r} is given.")
        if shared_group is not None and (not shared_group or any(c in shared_group for c in "/+#")):
            raise ValueError(f"shared_group must be one plain topic level, {shared_group!r} is given.")
        self.prefix = prefix
        self.shared_group = shared_group
        self._prefix_levels = prefix.count("/") + 1
        #: The longest vitals topic :meth:`location` accepts (shorter ones are worth caching).
        self.max_topic_chars = len(prefix) + FULL_FORM_LEVELS * (MAX_LEVEL_CHARS + 1)
        self._locations: dict[str, Location] = {}

    @property
    def vitals_filters(self) -> tuple[str, str]:
        """Filters for the short and the full vitals form."""
        return (f"{self.prefix}/+/+/{VITALS_LEVEL}", f"{self.prefix}/+/+/+/+/{VITALS_LEVEL}")

    @property
    def adt(self) -> str:
        return f"{self.prefix}/adt"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}/deadletter"

    def alert(self, ward: str, bed: str) -> str:
        return f"{self.prefix}/alerts/{ward}/{bed}"

    def vitals(self, ward: str, bed: str, site: str | None = None, device: str | None = None) -> str:
        """The topic a device publishes on: full form when site and device are given."""
        if site is None and device is None:
            return f"{self.prefix}/{ward}/{bed}/{VITALS_LEVEL}"
        if site is None or device is None:
            raise ValueError(f"site and device must be given together, {site!r} and {device!r} are given.")
        return f"{self.prefix}/{site}/{ward}/{bed}/{device}/{VITALS_LEVEL}"

    def subscriptions(self) -> list[str]:
        """What the bridge subscribes to (shared when a group is configured)."""
        filters = [*self.vitals_filters, self.adt]
        if self.shared_group is None:
            return filters
        return [f"{SHARED_PREFIX}/{self.shared_group}/{f}" for f in filters]

    def is_adt(self, topic: str) -> bool:
        return topic == self.adt

    def partition(self, topic: str, count: int) -> int:
        """The worker (0 .. ``count`` - 1) for ``topic``: a stable hash of its site, ward and bed,
        so one bed's devices share a worker; a topic that names no bed hashes as itself."""
        if count == 1:
            return 0
        try:
            where = self.location(topic)
            key = f"{where.site or ''}/{where.ward}/{where.bed}"
        except ValueError:
            key = topic
        return zlib.crc32(key.encode("utf-8")) % count

    def location(self, topic: str) -> Location:
        """The location named by a vitals topic.

        Raises
        ------
        ValueError
            When ``topic`` is not a vitals topic under this prefix.
        """
        location = self._locations.get(topic)
        if location is None:
            location = self._location(topic)
            if len(self._locations) >= LOCATION_CACHE_SIZE:
                self._locations.clear()
            self._locations[topic] = location
        return location

    def _location(self, topic: str) -> Location:
        if len(topic) > self.max_topic_chars:
            raise ValueError(f"topic must be at most {self.max_topic_chars} characters, "
                             f"{len(topic)} are given.")
        # MQTT 3.1.1 section 1.5.3 (5.0: 1.5.4) forbids U+0000 and says U+0001-U+001F and
        # U+007F-U+009F "SHOULD NOT" appear; medgate refuses those and every other unsafe character
        unsafe = describe_unsafe(topic)
        if unsafe is not None:
            raise ValueError(f"topic must not contain control or format characters, {unsafe} is given.")
        levels = topic.split("/")
        rest = levels[self._prefix_levels:]
        if "/".join(levels[:self._prefix_levels]) != self.prefix or not rest \
                or rest[-1] != VITALS_LEVEL:
            raise ValueError(f"topic must be a vitals topic under {self.prefix!r}, "
                             f"{_shown(topic)} is given.")
        longest = max(rest, key=len)
        if len(longest) > MAX_LEVEL_CHARS:
            raise ValueError(f"topic levels must be at most {MAX_LEVEL_CHARS} characters, one of "
                             f"{len(longest)} is given.")
        if len(rest) == SHORT_FORM_LEVELS:
            return Location(ward=rest[0], bed=rest[1])
        if len(rest) == FULL_FORM_LEVELS:
            return Location(site=rest[0], ward=rest[1], bed=rest[2], device=rest[3])
        raise ValueError(f"topic must have {SHORT_FORM_LEVELS} or {FULL_FORM_LEVELS} levels after "
                         f"the prefix, {_shown(topic)} is given.")


def _shown(topic: str) -> str:
    """``topic`` for an error message: repr, cut to its first :data:`MAX_LEVEL_CHARS` characters."""
    if len(topic) <= MAX_LEVEL_CHARS:
        return repr(topic)
    return f"{topic[:MAX_LEVEL_CHARS]!r}... ({len(topic)} characters)"


@dataclass(frozen=True)
class Partition:
    """A part of the topic space that one bridge node serves at a time: a ward, or one site's
    ward (see the module docstring).

    Raises
    ------
    ValueError
        When ``ward`` or ``site`` is not one plain topic level of at most
        :data:`MAX_LEVEL_CHARS` characters without unsafe characters.
    """

    ward: str
    site: str | None = None

    def __post_init__(self) -> None:
        for name, level in (("ward", self.ward), ("site", self.site)):
            if level is None and name == "site":
                continue
            if not isinstance(level, str) or not level or any(c in level for c in "/+#$") \
                    or len(level) > MAX_LEVEL_CHARS:
                raise ValueError(f"{name} must be one topic level of 1 to {MAX_LEVEL_CHARS} characters "
                                 f"without '/', '+', '#' or '$', {level!r} is given.")
            unsafe = describe_unsafe(level)
            if unsafe is not None:
                raise ValueError(f"{name} must not contain control or format characters, {unsafe} is given.")

    @classmethod
    def parse(cls, text: str) -> "Partition":
        """``{ward}`` or ``{site}/{ward}`` (a value of ``iomt.partitions``)."""
        if not isinstance(text, str):
            raise ValueError(f"a partition must be a string 'ward' or 'site/ward', {text!r} is given.")
        levels = text.split("/")
        if len(levels) == 1:
            return cls(ward=levels[0])
        if len(levels) == 2:
            return cls(ward=levels[1], site=levels[0])
        raise ValueError(f"a partition must be 'ward' or 'site/ward', {text!r} is given.")

    @property
    def name(self) -> str:
        return self.ward if self.site is None else f"{self.site}/{self.ward}"

    def vitals_filters(self, prefix: str) -> tuple[str, ...]:
        """The vitals filters of this partition under ``prefix``."""
        if self.site is None:
            return (f"{prefix}/{self.ward}/+/{VITALS_LEVEL}", f"{prefix}/+/{self.ward}/+/+/{VITALS_LEVEL}")
        return (f"{prefix}/{self.site}/{self.ward}/+/+/{VITALS_LEVEL}",)

    def holds(self, location: Location) -> bool:
        """Whether a message from ``location`` belongs to this partition."""
        return location.ward == self.ward and (self.site is None or location.site == self.site)

    def overlaps(self, other: "Partition") -> bool:
        """Whether some topic belongs to both (a ward and one site's ward of that name)."""
        return self.ward == other.ward and (self.site is None or other.site is None
                                             or self.site == other.site)
