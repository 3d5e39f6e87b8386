"""The text tower's name term (`train.py clip --name-weight W`).

CLIP's contrastive loss supervises only the pooled end-of-text state, where the scene dominates a caption. The
states of a name's own tokens, which the UNet's cross-attention reads, were left nearly where "a person" is:
changing "a person" into a celebrity's name moved the whole condition by 3-7 % (docs/world.md, "The third
check"). This term classifies each named person's token states (their mean over the name's tokens), and "person"
in a one-person caption as one more class, with a CosFace loss: normalised states against normalised class
directions, with a margin. A plain linear classifier would not do, since 41 token sequences are separable in 48
dimensions already; the margin asks for angles, which is what the cosines above measure.

With `anchors` (`--name-anchors`: each named person's mean identity embedding from the recogniser, [names, D]),
the class directions are those embeddings, fixed, and the states are mapped onto them by a learned linear map:
names of people who look alike may stay close, the others must part. Without, the directions are learned, and
every name ends up at an arbitrary angle from every other (docs/world.md, "the fourth check")."""
import torch
import torch.nn.functional as F

SCALE, MARGIN = 16.0, 0.35


def find(row: list, key: list):
    """Index of the first occurrence of the token sequence `key` in `row`, or None."""
    for i in range(len(row) - len(key) + 1):
        if row[i:i + len(key)] == key:
            return i
    return None


class NameTerm(torch.nn.Module):
    def __init__(self, tok, names: list, width: int, anchors=None):
        super().__init__()
        self.names = [tok(n, add_special_tokens=False).input_ids for n in names]
        self.person = tok("person", add_special_tokens=False).input_ids
        if anchors is None:
            self.project = torch.nn.Identity()
            self.classes = torch.nn.Parameter(torch.randn(len(names) + 1, width))
        else:
            self.project = torch.nn.Linear(width, anchors.shape[1], bias=False)
            self.register_buffer("classes", anchors.float())
        # Anchored, only the names have a class: "a person" looks like anyone.
        self.with_person = anchors is None

    def spans(self, input_ids, identities: list):
        """(row, start, end, class) of every name in the batch, and of "person" where one unnamed person is shown."""
        out = []
        for r, (row, who) in enumerate(zip(input_ids.tolist(), identities)):
            for k in who:
                if k < len(self.names):
                    key, label = self.names[k], k
                elif len(who) == 1 and self.with_person:
                    key, label = self.person, len(self.names)
                else:
                    continue
                start = find(row, key)
                if start is not None:
                    out.append((r, start, start + len(key), label))
        return out

    def forward(self, states, input_ids, identities: list):
        spans = self.spans(input_ids, identities)
        if not spans:
            return states.sum() * 0
        pooled = torch.stack([states[r, s:e].mean(0) for r, s, e, _ in spans])
        labels = torch.tensor([c for *_, c in spans], device=states.device)
        cos = F.normalize(self.project(pooled.float()), dim=-1) @ F.normalize(self.classes, dim=-1).T
        cos = cos - MARGIN * F.one_hot(labels, cos.shape[1])
        return F.cross_entropy(SCALE * cos, labels)
