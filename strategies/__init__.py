"""Trading decisions: what to hold given a signal table.

`signal_table` is the schema every source writes and every strategy reads; `topk` holds the
TopkDropout settings and its order rule; `rules` the rule strategies (momentum, reversal);
`costs` what a trade costs. The backtest engines in `evaluation/` simulate these decisions; they
do not make them.
"""
