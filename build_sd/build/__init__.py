"""The build machine: torch, iree-turbine, iree-compile, CMake + Ninja (`build_sd[build]`).

config -> model/ (torch) -> export -> compile -> validate -> bundle -> deploy (pack/push), and
the `build` pipeline that chains them after the planner. May import the runtime (validate and
bundle load modules) and the planner; nothing here is imported by the board side.
"""
