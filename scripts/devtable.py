"""Store reclmis.declarations.deviation_table() as the output of nbs/deviations.ipynb's generated cell (run from the root)."""
import json
from reclmis.declarations import deviation_table
p = 'nbs/deviations.ipynb'
nb = json.load(open(p))
c = next(c for c in nb['cells'] if 'deviation_table()' in ''.join(c['source']))
c['outputs'] = [{'data': {'text/markdown': deviation_table().splitlines(True),   # keys in nbdev_clean's order
                          'text/plain': ['<IPython.core.display.Markdown object>']},
                 'execution_count': None, 'metadata': {}, 'output_type': 'execute_result'}]
json.dump(nb, open(p, 'w'), indent=1, ensure_ascii=False); open(p, 'a').write('\n')
