"""The auto window's sizing, on a synthetic clock (no threads, no timing noise)."""

from hpsgd_ext.window import AutoWindow


def drive(w: AutoWindow, rounds: int, step_s: float, boundary_s: float, comm_steps: int):
    """A loop whose reduction lands ``comm_steps`` steps after each boundary; returns
    the window lengths."""
    now, windows, steps, since = 0.0, [], 0, 0
    for _ in range(100000):
        now += step_s
        steps += 1
        since += 1
        if w.should_end(now, steps, reduced=since >= comm_steps):
            now += boundary_s
            w.round_ended(boundary_s, steps)
            windows.append(steps)
            steps, since = 0, 0
            if len(windows) == rounds:
                return windows
        w.step_done(now)
    raise AssertionError("no boundary")


def test_free_rounds_keep_the_papers_rule():
    w = AutoWindow(count_background_cpu=False)
    windows = drive(w, 40, step_s=1e-3, boundary_s=0.0, comm_steps=3)
    assert w.min_window == 1
    # every window ends as soon as the reduction has landed, bar the probes' extra steps
    assert windows[-1] == 3 and max(windows) <= 3 + w.probe_steps


def test_costly_rounds_get_windows_that_hide_the_cost():
    w = AutoWindow(count_background_cpu=False, budget=0.02)
    windows = drive(w, 40, step_s=1e-3, boundary_s=1e-3, comm_steps=1)
    assert w.min_window == 50                   # 1 ms of cost is 2% of 50 steps of 1 ms
    assert all(n >= 50 for n in windows[5:])
    assert abs(w.cost_s - 1e-3) < 1e-9 and abs(w.step_s - 1e-3) < 1e-9


def test_min_window_is_capped_and_never_ends_a_window_in_flight():
    w = AutoWindow(count_background_cpu=False, budget=0.02, max_window=16)
    windows = drive(w, 20, step_s=1e-3, boundary_s=1.0, comm_steps=40)
    assert w.min_window == 16
    assert all(n >= 40 for n in windows)        # the reduction still has to land first


def test_restart_forgets_time_outside_the_loop():
    w = AutoWindow(count_background_cpu=False)
    drive(w, 5, step_s=1e-3, boundary_s=0.0, comm_steps=1)
    w.restart()
    assert not w.should_end(1e6, 1, reduced=False)
    assert w.step_s is not None and w.step_s < 1.0  # the pause was not taken as a step
