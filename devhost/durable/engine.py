"""devhost's Durable Functions engine: runs orchestrations through the SDK's own entry point.

What the Durable extension does on Azure, in one process: episodes of an orchestrator
replay its history through the SDK handle (`Orchestrator.create(fn)`); the new actions
become history and work (activities on a bounded thread pool, durable timers, sub-
orchestrations); results come back as new events through a persisted inbox. All state lives
in Table Storage (see store.py), and each episode commits crash-safely:

1. load the instance row (with its ETag), the committed history and the inbox;
2. run the orchestrator over history + the new events;
3. upsert the new history rows at their indices (idempotent);
4. replace the instance row with If-Match, advancing `HistoryLength`: the commit point;
5. only then start the new work and delete the consumed inbox rows.

The history an episode committed is kept in memory with the instance row version it
produced (`HistoryCache`); the next episode skips re-reading it only when the row it loads
is still exactly that version, so any other writer (another engine, a purge, a restart)
sends it back to storage.

A crash anywhere leaves either the old committed state (the episode simply runs again) or
the new one (whose work `start()` re-derives: unfinished activities are dispatched again,
timers re-armed, sub-orchestrations re-checked). Results already in the inbox or history
are never recomputed, so a completed activity never runs twice; an activity in flight at a
crash runs again (at-least-once, as on Azure).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

from devhost.durable import actions as act
from devhost.durable import history as h
from devhost.durable.api import ManagementApi
from devhost.durable.history import EventType
from devhost.durable.ownership import HEARTBEAT_SECONDS, EnginePeers
from devhost.durable.runner import run_activity, run_orchestrator
from devhost.durable.store import DurableStore, HistoryRow, Instance
from devhost.durable.timers import DurableTimers
from devhost.loader import FunctionIndex

MAX_EPISODE_ATTEMPTS = 5  # storage hiccups are retried; a persistent fault parks the instance
HISTORY_CACHE_INSTANCES = 256
GATHER_SECONDS = 1.0  # see DurableEngine._gather
DELIVERY_ATTEMPTS = 8  # ~25 s of storage trouble before an activity result is given up


class HistoryCache:
    """Committed history per instance, valid for one instance row version (its ETag).

    Rereading and deserializing the whole history on every episode is the engine's largest
    storage cost in a fan-out (a batch of 50 activities takes tens of episodes). A cached
    entry is used only when the instance row read at the start of the episode has the very
    ETag our own commit produced: the same generation and `HistoryLength`, written by us.
    """

    def __init__(self, capacity: int = HISTORY_CACHE_INSTANCES) -> None:
        self._entries: OrderedDict[str, tuple[str, int, list[HistoryRow]]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def get(self, inst: Instance) -> list[HistoryRow] | None:
        with self._lock:
            entry = self._entries.get(inst.instance_id)
            if entry is None:
                return None
            etag, generation, rows = entry
            if inst.etag is None or etag != inst.etag or generation != inst.generation or len(rows) != inst.history_length:
                del self._entries[inst.instance_id]
                return None
            self._entries.move_to_end(inst.instance_id)
            return rows

    def put(self, inst: Instance, rows: list[HistoryRow]) -> None:
        with self._lock:
            if inst.terminal or inst.etag is None:
                self._entries.pop(inst.instance_id, None)
                return
            self._entries[inst.instance_id] = (inst.etag, inst.generation, rows)
            self._entries.move_to_end(inst.instance_id)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def drop(self, instance_id: str) -> None:
        with self._lock:
            self._entries.pop(instance_id, None)


class DurableEngine:
    """The contract devhost's host uses: start/stop, the client binding, the webhook handler."""

    def __init__(
        self,
        index: FunctionIndex,
        *,
        connection_string: str,
        task_hub: str,
        base_url: str,
        host_config: Mapping[str, Any],
        logger: logging.Logger,
        system_key: str = "",
    ) -> None:
        durable = (host_config.get("extensions") or {}).get("durableTask") or {}
        self.log = logger
        self.system_key = system_key
        self.rpc_base_url: str | None = None  # the local RPC listener, once the host has started it
        self.task_hub = task_hub
        self.base_url = base_url.rstrip("/")
        self.worker = index.worker
        self.orchestrators = {f.name: f for f in index.of_trigger("orchestrationTrigger")}
        self.activities = {f.name: f for f in index.of_trigger("activityTrigger")}
        self.store = DurableStore(connection_string, task_hub)
        self.api = ManagementApi(self)
        self._activity_slots = int(durable.get("maxConcurrentActivityFunctions", 10))
        self._orchestrator_slots = int(durable.get("maxConcurrentOrchestratorFunctions", 10))
        self._ready: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._queued: set[str] = set()
        self._running: set[str] = set()
        self._dirty: set[str] = set()
        self._failures: dict[str, int] = {}
        self._history = HistoryCache()
        self._in_flight: dict[str, int] = {}  # activities dispatched and not yet delivered, per instance
        self._last_episode: dict[str, float] = {}  # when its last episode ended (monotonic), while any are in flight
        self._activity_done = threading.Condition(self._lock)
        self.peers = EnginePeers(self.store, self.base_url)
        self.engine_id = self.peers.engine_id
        self.timers = DurableTimers(
            lambda iid, gen, tid, fire_at: self.deliver(iid, h.timer_fired(tid, fire_at), gen), logger
        )
        self._stopping = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self.store.create_tables()
        self._pool = ThreadPoolExecutor(self._activity_slots, thread_name_prefix="durable-activity")
        for i in range(self._orchestrator_slots):
            t = threading.Thread(target=self._orchestrator_worker, name=f"durable-orch-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self.peers.heartbeat()
        self.log.info("durable engine %s serving task hub %s", self.engine_id, self.task_hub)
        self.timers.start()
        housekeeping = threading.Thread(target=self._housekeeping, name="durable-housekeeping", daemon=True)
        housekeeping.start()
        self._threads.append(housekeeping)
        self._scan_orphans()

    def stop(self) -> None:
        self._stopping.set()
        for _ in range(self._orchestrator_slots):
            self._ready.put(None)
        self.timers.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for t in self._threads:
            t.join(timeout=10)
        try:
            self.peers.heartbeat(stopped=True)
        except Exception:
            self.log.warning("could not mark this engine stopped in the task hub")

    def client_binding(self) -> str:
        return self.api.client_binding()

    def handle_http(
        self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        return self.api.handle(method, path, query, headers, body)

    # --- scheduling ----------------------------------------------------------------
    def signal(self, instance_id: str) -> None:
        """Run an episode for the instance soon (one at a time per instance)."""
        with self._lock:
            if instance_id in self._running:
                self._dirty.add(instance_id)
            elif instance_id not in self._queued:
                self._queued.add(instance_id)
                self._ready.put(instance_id)

    def _orchestrator_worker(self) -> None:
        while not self._stopping.is_set():
            instance_id = self._ready.get()
            if instance_id is None:
                return
            with self._lock:
                self._queued.discard(instance_id)
                self._running.add(instance_id)
            again = False
            try:
                self._gather(instance_id)
                again = self._episode(instance_id)
                self._failures.pop(instance_id, None)
            except Exception:
                failures = self._failures[instance_id] = self._failures.get(instance_id, 0) + 1
                again = failures < MAX_EPISODE_ATTEMPTS
                self.log.exception(
                    "orchestration %s: episode failed (attempt %d)%s",
                    instance_id,
                    failures,
                    "; retrying" if again else "; parked until its next event",
                )
                time.sleep(0.2 * failures)
            finally:
                with self._lock:
                    self._running.discard(instance_id)
                    if self._in_flight.get(instance_id):
                        self._last_episode[instance_id] = time.monotonic()
                    again = again or instance_id in self._dirty
                    self._dirty.discard(instance_id)
            if again and not self._stopping.is_set():
                self.signal(instance_id)

    def _gather(self, instance_id: str) -> None:
        """Let results of a fan-out collect for a moment before the next episode.

        Every episode replays the instance's whole history and costs five storage calls, so
        one episode per activity result makes a 50-wide batch quadratic. While the instance
        still has activities running and its last episode ended less than `GATHER_SECONDS`
        ago, wait out the rest of that window (results keep arriving in the inbox meanwhile);
        the episode that takes the last outstanding result is never delayed. This is what
        the Durable extension's batched control-queue reads do on Azure.

        The price: an orchestrator that reacts to *some* of its running activities (`task_any`
        over activities, an activity raced against a timer) may see that result up to
        `GATHER_SECONDS` late. On Azure, the control-queue polling delay of an idle hub is up
        to 30 s by default, so 1 s stays within what the real host does; spendgate's own
        `task_any` (billing lanes) waits on sub-orchestrations, which are never held back.
        With 0.1 s a 25-charge batch took ~6 episodes; each costs a full replay and five
        storage calls (docs/ledger.md).
        """
        with self._lock:
            last = self._last_episode.get(instance_id)
            if last is None:
                return
            deadline = last + GATHER_SECONDS
            while self._in_flight.get(instance_id) and not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._activity_done.wait(left)

    def _activity_started(self, instance_id: str) -> None:
        with self._lock:
            self._in_flight[instance_id] = self._in_flight.get(instance_id, 0) + 1

    def _activity_finished(self, instance_id: str) -> None:
        with self._lock:
            left = self._in_flight.get(instance_id, 0) - 1
            if left > 0:
                self._in_flight[instance_id] = left
            else:
                self._in_flight.pop(instance_id, None)
                self._last_episode.pop(instance_id, None)
            self._activity_done.notify_all()

    def deliver(self, instance_id: str, event: dict[str, Any], generation: int = -1) -> None:
        """Persist a new event for the instance, then wake it."""
        self.store.add_inbox(instance_id, event, generation)
        self.signal(instance_id)

    # --- one episode ---------------------------------------------------------------
    def _episode(self, instance_id: str) -> bool:
        """Run the orchestrator over its new events and commit; True if more events wait."""
        inst = self.store.get_instance(instance_id)
        inbox = self.store.load_inbox(instance_id)
        if inst is None or inst.terminal:
            if inbox:
                self.store.delete_inbox(instance_id, [i.key for i in inbox])
            return False
        if inst.owner != self.engine_id and self.peers.adoptable(inst.owner):
            self._adopt(inst)
            return True
        rows = self._history.get(inst)
        if rows is None:
            rows = self.store.load_history(instance_id, inst.generation, inst.history_length)
        sel = act.select_new_events(inbox, rows, inst.generation)
        batch, drop, terminate, scheduled = sel.batch, sel.drop, sel.terminate, sel.scheduled
        if drop:
            self.log.info("orchestration %s: %d stale inbox event(s) discarded (already in history, "
                          "an earlier generation, or a repeated result)", instance_id, len(drop))
        if not batch and inst.history_length > 0:
            if drop:
                self.store.delete_inbox(instance_id, drop)
            return False

        started = time.monotonic()
        now = h.utc_now()
        new_rows: list[HistoryRow] = [HistoryRow(h.orchestrator_started(now), {}, None)]
        if inst.history_length == 0:
            new_rows.append(
                HistoryRow(h.execution_started(inst.name, inst.input, now, inst.parent_instance_id), {}, None)
            )
        work: list[act.Work] = []
        outcome = "waiting"
        continue_input: str | None = None
        was_continued = False
        if terminate is not None:
            reason = terminate.event.get("Input")
            new_rows.append(HistoryRow(terminate.event, {}, terminate.key))
            inst.status, inst.output, outcome = "Terminated", json.dumps(reason), "terminated"
        else:
            new_rows.extend(HistoryRow(i.event, {}, i.key) for i in batch)
            fn = self.orchestrators.get(inst.name)
            if fn is None:
                result_state, error = {}, f"The function '{inst.name}' doesn't exist or is not an orchestrator."
            else:
                played = [dict(r.event, IsPlayed=True) for r in rows]
                context = {
                    "history": played + [r.event for r in new_rows],
                    "input": inst.input,
                    "instanceId": instance_id,
                    "isReplaying": bool(rows),
                    "parentInstanceId": inst.parent_instance_id,
                    "upperSchemaVersion": 2,
                }
                res = run_orchestrator(self.worker, fn, context)
                result_state, error = res.state, res.error
            if "customStatus" in result_state:
                inst.custom_status = json.dumps(result_state["customStatus"])
            try:
                plan, seen = act.plan_new_actions(result_state, inst.actions_seen, inst.next_seq, instance_id, now)
            except act.UnsupportedAction as exc:
                error, plan, seen = str(exc), act.Plan([], [], inst.next_seq), inst.actions_seen
            if error is not None:
                message = f"Orchestrator function '{inst.name}' failed: {error}"
                new_rows.append(HistoryRow(h.execution_completed("Failed", json.dumps(message), now), {}, None))
                inst.status, inst.output, outcome = "Failed", json.dumps(message), "failed"
            elif plan.continue_as_new:
                new_rows.append(HistoryRow(h.continue_as_new(plan.continue_input, now), {}, None))
                continue_input, was_continued, outcome = plan.continue_input, True, "continued-as-new"
            elif result_state.get("isDone"):
                output = json.dumps(result_state.get("output"))
                new_rows.append(HistoryRow(h.execution_completed("Completed", output, now), {}, None))
                inst.status, inst.output, outcome = "Completed", output, "completed"
            else:
                new_rows.extend(plan.rows)
                work.extend(plan.work)
                inst.next_seq, inst.actions_seen, inst.status = plan.next_seq, seen, "Running"
                if batch and act.allocates(batch[-1].event, scheduled):
                    step = act.plan_retry_step(batch[-1].event, scheduled, inst.next_seq, instance_id, now)
                    new_rows.extend(step.rows)
                    work.extend(step.work)
                    inst.next_seq = step.next_seq
        new_rows.append(HistoryRow(h.orchestrator_completed(now), {}, None))

        self.store.write_history(instance_id, inst.generation, inst.history_length, new_rows)
        old_generation = inst.generation
        inst.history_length += len(new_rows)
        inst.updated = h.iso(now)
        if was_continued:  # a fresh generation starts with the new input (ExecutionStarted next episode)
            inst.generation, inst.history_length, inst.next_seq, inst.actions_seen = old_generation + 1, 0, 0, 0
            inst.input, inst.output, inst.status = continue_input, None, "Running"
        inst.owner = self.engine_id
        try:
            self.store.replace_instance(inst)  # the commit point
        except ResourceModifiedError:
            if not self._commit_landed(inst):
                self._history.drop(instance_id)
                self.log.warning("orchestration %s: instance row changed during the episode; replaying", instance_id)
                return True
        if was_continued:
            self._history.drop(instance_id)
        else:
            self._history.put(inst, rows + new_rows)
        self.log.info(
            "orchestrator %s (%s) episode: %d new events, %d scheduled, %.0f ms, %s",
            inst.name,
            instance_id,
            len(batch),
            len(work),
            (time.monotonic() - started) * 1000,
            outcome,
        )
        for w in work:
            self._start_work(inst, w)
        self.store.delete_inbox(instance_id, drop + [i.key for i in batch])
        if was_continued:
            self.store.delete_generations_before(instance_id, inst.generation)
        if inst.terminal:
            self._notify_parent(inst)
        return sel.more or was_continued

    def _commit_landed(self, inst: Instance) -> bool:
        """After a 412 on the commit: was it our own write, retried by the storage client after
        a dropped connection? Then the episode committed and its work must still start."""
        current = self.store.get_instance(inst.instance_id)
        landed = current is not None and (
            current.owner,
            current.generation,
            current.history_length,
            current.updated,
        ) == (self.engine_id, inst.generation, inst.history_length, inst.updated)
        if landed:
            assert current is not None
            inst.etag = current.etag
        return landed

    # --- work ----------------------------------------------------------------------
    def _start_work(self, inst: Instance, w: act.Work) -> None:
        if w.kind == "activity":
            assert self._pool is not None
            self._activity_started(inst.instance_id)
            try:
                self._pool.submit(self._activity, inst.instance_id, inst.generation, w.event_id, w.name, w.input)
            except Exception:
                self._activity_finished(inst.instance_id)
                raise
        elif w.kind == "timer":
            assert w.fire_at is not None
            self.timers.arm(inst.instance_id, inst.generation, w.event_id, w.fire_at)
        else:
            assert w.instance_id is not None
            self._start_sub(inst, w.event_id, w.name, w.instance_id, w.input)

    def _activity(self, instance_id: str, generation: int, event_id: int, name: str, input_text: str | None) -> None:
        try:
            self._run_activity(instance_id, generation, event_id, name, input_text)
        finally:
            self._activity_finished(instance_id)

    def _run_activity(
        self, instance_id: str, generation: int, event_id: int, name: str, input_text: str | None
    ) -> None:
        fn = self.activities.get(name)
        started = time.monotonic()
        if fn is None:
            self.log.error("activity %s (%s #%d): no such activity function", name, instance_id, event_id)
            event = h.task_failed(event_id, f"The function '{name}' doesn't exist or is not an activity.", "")
        else:
            res = run_activity(self.worker, fn, input_text)
            event = (
                h.task_completed(event_id, res.result_text)
                if res.ok
                else h.task_failed(event_id, res.reason, res.details)
            )
            self.log.info(
                "activity %s (%s #%d) %s in %.0f ms",
                name,
                instance_id,
                event_id,
                "succeeded" if res.ok else "failed",
                (time.monotonic() - started) * 1000,
            )
        self._deliver_result(instance_id, event, generation, f"{name} #{event_id}")

    def _deliver_result(self, instance_id: str, event: dict[str, Any], generation: int, what: str) -> None:
        """Persist an activity's result, retrying storage faults: a result lost here would leave
        its orchestration waiting forever (nothing else would ever run that activity again)."""
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            try:
                self.store.add_inbox(instance_id, event, generation)
                break
            except Exception:
                self.log.exception("activity %s (%s): storing its result failed (attempt %d)", what, instance_id, attempt)
                if attempt == DELIVERY_ATTEMPTS:
                    raise
                time.sleep(min(0.1 * 2**attempt, 5.0))
        if not self._stopping.is_set():  # when stopping, the next start runs the episode
            self.signal(instance_id)

    def _start_sub(self, parent: Instance, event_id: int, name: str, child_id: str, input_text: str | None) -> None:
        child = self.store.get_instance(child_id)
        mine = child is not None and (child.parent_instance_id, child.parent_task_id, child.parent_generation) == (
            parent.instance_id,
            event_id,
            parent.generation,
        )
        if mine:
            assert child is not None
            if child.terminal:
                self._notify_parent(child)
            else:
                self.signal(child_id)
            return
        if child is not None and not child.terminal:
            self.deliver(
                parent.instance_id,
                h.sub_orchestration_failed(
                    event_id, f"An orchestration with instance id '{child_id}' is already running.", ""
                ),
                parent.generation,
            )
            return
        now = h.iso(h.utc_now())
        new = Instance(
            child_id,
            name,
            "Pending",
            input_text,
            created=now,
            updated=now,
            generation=(child.generation + 1) if child else 0,
            parent_instance_id=parent.instance_id,
            parent_task_id=event_id,
            parent_generation=parent.generation,
            owner=self.engine_id,
        )
        try:
            if child is None:
                self.store.insert_instance(new)
            else:
                new.etag = child.etag
                self.store.replace_instance(new)
        except (ResourceExistsError, ResourceModifiedError):
            self.signal(parent.instance_id)
            return
        self.signal(child_id)

    def _notify_parent(self, child: Instance) -> None:
        if not child.parent_instance_id or child.parent_task_id is None:
            return
        task_id = int(child.parent_task_id)
        if child.status == "Completed":
            event = h.sub_orchestration_completed(task_id, child.output)
        else:
            reason = json.loads(child.output) if child.output else child.status
            event = h.sub_orchestration_failed(
                task_id, str(reason), f"sub-orchestration {child.instance_id} {child.status.lower()}"
            )
        self.deliver(child.parent_instance_id, event, int(child.parent_generation or 0))

    # --- ownership and recovery (see ownership.py) ----------------------------------
    def _housekeeping(self) -> None:
        beats = 0
        while not self._stopping.wait(HEARTBEAT_SECONDS):
            beats += 1
            try:
                self.peers.heartbeat()
                if beats % 2 == 0:
                    self._scan_orphans()
            except Exception:
                self.log.exception("durable housekeeping failed; retrying")

    def _scan_orphans(self) -> None:
        """Wake every unfinished instance that needs an owner (its episode adopts it)."""
        for inst in self.store.list_instances(with_payloads=False):
            if not inst.terminal and inst.owner != self.engine_id and self.peers.adoptable(inst.owner):
                self.signal(inst.instance_id)

    def _adopt(self, inst: Instance) -> None:
        """Claim the instance (If-Match), then re-derive its outstanding work from history and inbox."""
        previous, inst.owner = inst.owner, self.engine_id
        try:
            self.store.replace_instance(inst)
        except ResourceModifiedError:
            return
        inst = self.store.get_instance(inst.instance_id) or inst
        rows = self.store.load_history(inst.instance_id, inst.generation, inst.history_length)
        pending = {t for r in rows if (t := act.completion_target(r.event)) is not None}
        for item in self.store.load_inbox(inst.instance_id):
            if (t := act.completion_target(item.event)) is not None and item.generation in (-1, inst.generation):
                pending.add(t)
        redone = 0
        for (is_timer, seq), row in act.scheduling_rows(rows).items():
            if (is_timer, seq) in pending:
                continue
            ev = row.event
            redone += 1
            if is_timer:
                self.timers.arm(inst.instance_id, inst.generation, seq, ev["FireAt"])
            elif ev["EventType"] == EventType.TASK_SCHEDULED:
                self._start_work(inst, act.Work("activity", seq, ev["Name"], ev.get("Input")))
            else:
                self._start_sub(inst, seq, ev["Name"], ev["InstanceId"], ev.get("Input"))
        self.log.info(
            "orchestration %s (%s) resumed from engine %s: %d unfinished task(s) restarted",
            inst.name,
            inst.instance_id,
            previous or "unknown",
            redone,
        )
