"""The stages of `l3m.dsl.resolve`, one concern each; data flows one way through them:

    overrides  command-line PATH=VALUE, parsed before anything is read; each must be used
    modules    files and imports, each file's lets and templates (a scope table)
    evaluate   expressions, lets, `${...}` interpolation, size limits
    entries    registered names: the registry plus extensions read from source
    binding    the one routine that binds given items to slots: arguments and ports alike
    calls      a registered name with its arguments -> `ir.Call`
    models     nodes, stages, nested models, template instances, key maps
    sections   settings sections
    program    the driver: a file + overrides -> `Result`

`context` holds what all share (the diagnostics), `tools` the stages that later ones use.
`l3m.dsl.resolve.resolve` is the public entry point.
"""
