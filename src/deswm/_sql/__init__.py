"""SQL plumbing shared by the SQL source and the SQL stores (private).

``names``: identifier settings; ``errors``: database failures as typed deswm errors;
``timecols``: how a timestamp column is read and bound, and the UTC session for MySQL;
``schema``: pieces of deswm's own tables and their race-tolerant creation;
``engines``: a store's engine, owned (disposed on close) or borrowed.
"""
