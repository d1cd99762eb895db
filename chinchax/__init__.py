"""chinchax: a compute budget in, a trained language model and a better scaling law out.

Packages import downwards only (launch → training → scaling → models); this one holds what
every layer shares, the error family.
"""
