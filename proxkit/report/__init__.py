"""See what refining did: per-document diffs (`diff`), run statistics and a sample (`collect`),
a self-contained HTML report (`html`, `prox report`) and a terminal view (`terminal`,
`prox inspect`)."""
