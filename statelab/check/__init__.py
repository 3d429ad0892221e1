"""`statelab check`: is *your* service ready to scale out? Its users' state, measured through faults.

    options    what to check and how hard (CheckOptions), the phases in order
    stores     Redis, PostgreSQL and S3 for the check, named by the conventional variables
    disks      each instance's own /tmp and working directory; what they wrote (phase 5)
    instances  one instance of the app (gunicorn APP or --cmd) on its own disk: the Lab's starter
    journey    the user's Locust file: validated, run once per phase, read back
    child/     the Locust file that wraps the journey (runs in Locust's process only)
    phases     one phase: routing, traffic, the fault mid-way
    compare    failure kinds of a phase against the baseline; each check's verdict (pure)
    result     the frozen records and their JSON form
    run        the whole check, cleanup included

The lab (statelab.topology.Lab) runs the instances behind statelab's balancer and performs the
deploy, the kill and the scale-out; statelab.report.check shows the result. Import from the
modules (`statelab.check.run.run_check`): this package itself stays cheap to import, for the CLI.
"""
