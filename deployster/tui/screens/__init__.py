"""The dashboard's screens: projects (home), one project, a job's log, modals."""
