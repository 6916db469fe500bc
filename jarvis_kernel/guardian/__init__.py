"""The guardian: watches the swarm, judges what is wrong, escalates like an OTP supervisor.

Pure parts (no I/O, no clock; time comes in as ``now_s``):
  - `view.SwarmState`: the guardian's own view, folded from ``<ns>:events``.
  - `heuristics`: detectors returning `Finding`s (stall, worker_dead, error_spiral,
    token_spike, token_budget); the formulas are in that module's docstring.
  - `ladder.Ladder`: the escalation policy (dump -> restart -> pause + RCA), with OTP
    restart intensity and capped backoff; decisions are in that module's docstring.
Blocking part: `incidents` (``.memory/incidents.jsonl``; call through ``to_thread``).

Service: `service.GuardianService` (started by the `Kernel` when ``guardian.enabled``; what
it needs from the kernel comes in as `service.KernelHooks`) runs this loop; its module
docstring says why restart reclaims before restarting and why the market's own
dead-worker sweep stays on beside it::

    state = SwarmState.from_config(cfg.guardian); ladder = Ladder(cfg.guardian)
    book = LadderBook()
    XGROUP CREATE <ns>:events guardian (once); on start re-read its pending entries
    every tick (``guardian.tick_s`` of Clock time; events are folded as they arrive):
        for each event of XREADGROUP <ns>:events guardian <consumer>:
            state.apply(decode_event(raw), clock.monotonic()); XACK
            on task.assigned/started: state.set_timeout(task_id, task.timeout_s) from the
            Task (the kernel's task store or the worker's list)
        state.observe_heartbeats(ZRANGE <ns>:heartbeats WITHSCORES, clock.time_ms(),
                                 clock.monotonic())
        state.set_kind(worker, "managed") for workers the kernel runs through a runtime
        findings = detect_all(state, now_s, cfg.guardian,
                              liveness_dead_after_s=cfg.liveness.dead_after_s)
        book, actions = ladder.plan(findings, book, now_s, managed=state.managed_workers())
        for action in actions if action.acts:
            dump: runtime.signal(worker, SIGUSR1) if action.via == "signal"
                  else PUBLISH <ns>:control:<worker> {"command": "dump"}
            restart: after action.delay_s (Clock.sleep, in the service's task group):
                  take the worker's tasks back (task.requeued, attempt + 1), then
                  runtime.restart(worker)
            reclaim: take the tasks back only (a foreign worker cannot be restarted)
            pause_and_rca: SET <ns>:swarm:paused PauseInfo(reason, by="guardian") +
                  swarm.paused; submit action.rca.to_task(<new id>); remember its id.
                  The RCA task must be let through while paused (the pause stops
                  ordinary work only).
            write GuardianIntervention(level, action, reason, incident_id) to the events
            and incident_from_action(...) with append_incident (via to_thread)
        on task.completed / task.dead of the RCA task: book, resume = ladder.rca_done(book)
            and, if resume, DEL <ns>:swarm:paused + swarm.resumed (state clears its
            failure runs on swarm.resumed)
"""
