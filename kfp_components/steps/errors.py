class StepError(Exception):
    """A pipeline step cannot go on because of its input or of a service it needs.

    The message names the file, column, URL or parameter at fault and the problem; the local runner
    (`kfp_components.run_local`) reports it as the reason a run failed.
    """
