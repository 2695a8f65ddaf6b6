"""NCRONTAB schedules as the Functions timer trigger reads them: six fields, seconds first.

The timers extension parses a schedule with NCrontab's `CrontabSchedule.TryParse(expression,
new ParseOptions { IncludingSeconds = true })` (Azure/azure-webjobs-sdk-extensions,
`Extensions/Timers/Scheduling/CronSchedule.cs`, `TryCreate`), so exactly six space-separated
fields are accepted::

    {second} {minute} {hour} {day} {month} {day-of-week}
      0-59     0-59    0-23   1-31  1-12    0-6 (Sunday = 0)

Each field (atifaziz/NCrontab, `CrontabFieldImpl.cs`, `InternalParse`) is a comma list of items;
an item is `*`, `a`, `a-b`, optionally followed by `/step`; `a/step` means `a-max/step`. Months
and days of the week also take names, matched case-insensitively by prefix in calendar order
(`Jan`, `Mon`, `Wed`; the first name the text is a prefix of wins). A value outside the field's
range, an empty item, a zero step or a 5-field expression is refused. The day of the month and
the day of the week must *both* match (NCrontab's `TryGetNextOccurrence` checks the day of week
after picking the day; classic cron ORs them). The next occurrence is strictly after the base
time, with whole seconds.

The extension's other schedule form, a TimeSpan (`"00:05:00"`, App Service plans only), is not
accepted here: devhost is no more lenient than the plans it stands in for (Flex Consumption).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_FIELDS = (  # (name, min, max, names)
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day", 1, 31, ()),
    ("month", 1, 12, ("january", "february", "march", "april", "may", "june", "july", "august", "september",
                      "october", "november", "december")),
    ("day-of-week", 0, 6, ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")),
)
_MAX_YEARS = 8  # a schedule with no occurrence in this many years (e.g. 30 February) has none


class InvalidSchedule(ValueError):
    """Not a six-field NCRONTAB expression the timers extension would accept."""


def _value(text: str, low: int, names: tuple[str, ...], field: str) -> int:
    if not text:
        raise InvalidSchedule(f"empty value in the {field} field")
    if text[0].isdigit():
        if not text.isdigit():
            raise InvalidSchedule(f"{text!r} is not a number ({field})")
        return int(text)
    for i, name in enumerate(names):
        if name.startswith(text.lower()):
            return i + low
    raise InvalidSchedule(f"{text!r} is not a valid {field} value")


def _field(text: str, index: int) -> frozenset[int]:
    field, low, high, names = _FIELDS[index]
    values: set[int] = set()
    for item in text.split(","):
        step: int | None = None
        if "/" in item:
            item, _, step_text = item.partition("/")
            if not step_text.isdigit() or int(step_text) == 0:
                raise InvalidSchedule(f"bad step {step_text!r} in the {field} field")
            step = int(step_text)
        if item == "*":
            first, last = low, high
        elif item.find("-") > 0:
            a, _, b = item.partition("-")
            first, last = _value(a, low, names, field), _value(b, low, names, field)
        else:  # one value; with a step it runs to the field's end (NCrontab: `a/n` is `a-max/n`)
            first = _value(item, low, names, field)
            last = first if step is None else high
        if not (low <= first <= high and low <= last <= high):
            raise InvalidSchedule(f"{item!r} is outside {low}-{high} ({field})")
        values.update(range(first, last + 1, step or 1))
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    """A parsed six-field NCRONTAB schedule (`parse`); `next_after` finds occurrences."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday, as NCrontab and .NET's DayOfWeek

    def matches(self, t: datetime) -> bool:
        return (t.second in self.seconds and t.minute in self.minutes and t.hour in self.hours
                and t.day in self.days and t.month in self.months and (t.weekday() + 1) % 7 in self.weekdays)

    def next_after(self, base: datetime) -> datetime | None:
        """The first occurrence strictly after `base` (whole seconds; None: none within `_MAX_YEARS`)."""
        t = base.replace(microsecond=0) + timedelta(seconds=1)
        limit = base.replace(year=base.year + _MAX_YEARS) if not (base.month == 2 and base.day == 29) else \
            base.replace(year=base.year + _MAX_YEARS, day=28)
        while t < limit:
            if t.month not in self.months:  # first day of the next month
                t = (t.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0)
            elif t.day not in self.days or (t.weekday() + 1) % 7 not in self.weekdays:
                t = t.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t = t.replace(second=0) + timedelta(minutes=1)
            elif t.second not in self.seconds:
                t += timedelta(seconds=1)
            else:
                return t
        return None

    def occurrences_in(self, start: datetime, span: timedelta) -> int:
        """How many occurrences fall in (start, start + span) — the extension's test for `useMonitor`."""
        count, t = 0, self.next_after(start)
        while t is not None and t < start + span and count < 2:
            count += 1
            t = self.next_after(t)
        return count


def parse(expression: str) -> Schedule:
    """Parse a six-field NCRONTAB expression (module doc); `InvalidSchedule` otherwise."""
    tokens = expression.split()
    if len(tokens) != 6:
        raise InvalidSchedule(f"{expression!r} must have 6 fields (second minute hour day month day-of-week), "
                              f"as the Functions timer trigger requires; it has {len(tokens)}")
    sets = [_field(tok, i) for i, tok in enumerate(tokens)]
    return Schedule(expression, *sets)
