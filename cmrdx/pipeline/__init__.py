"""The jobs that run the whole flow: one study (``classify``), an archive (``batch``: discovery, a resumable
journal, engines that prepare and encode studies, local or Ray) and a search store over batch results
(``search``). They own no step of the flow themselves: each step is imported from its module."""
