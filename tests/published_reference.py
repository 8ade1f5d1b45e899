"""The authors' parameter names for our head, written out module by module from their model code: the
reference the checkpoint conversion is compared against (used by the checkpoint and predictor tests)."""
import torch

from excel.modeling.head import ExCELHead


def expected_pairs(head: ExCELHead) -> list[tuple[str, torch.Tensor]]:
    """(published key, our parameter) for every published head tensor, written from the modules."""
    pairs = []
    for i, mlp in enumerate(head.adapter.mlps):
        prefix = f"module.decoder_fts_fuse.linears_modulelist.{i}."
        pairs += [(prefix + "proj.weight", mlp[0].weight), (prefix + "proj.bias", mlp[0].bias),
                  (prefix + "proj_2.weight", mlp[2].weight), (prefix + "proj_2.bias", mlp[2].bias)]
    pairs += [("module.decoder_fts_fuse.linear_fuse.weight", head.adapter.fuse.weight),
              ("module.decoder_fts_fuse.linear_fuse.bias", head.adapter.fuse.bias)]
    for j, block in enumerate(head.decoder.transformer.resblocks):
        prefix = f"module.decoder.transformer.resblocks.{j}."
        pairs += [(prefix + "attn.in_proj_weight", block.attn.in_proj_weight),
                  (prefix + "attn.in_proj_bias", block.attn.in_proj_bias),
                  (prefix + "attn.out_proj.weight", block.attn.out_proj.weight),
                  (prefix + "attn.out_proj.bias", block.attn.out_proj.bias),
                  (prefix + "ln_1.weight", block.ln_1.weight), (prefix + "ln_1.bias", block.ln_1.bias),
                  (prefix + "mlp.c_fc.weight", block.mlp.c_fc.weight), (prefix + "mlp.c_fc.bias", block.mlp.c_fc.bias),
                  (prefix + "mlp.c_proj.weight", block.mlp.c_proj.weight),
                  (prefix + "mlp.c_proj.bias", block.mlp.c_proj.bias),
                  (prefix + "ln_2.weight", block.ln_2.weight), (prefix + "ln_2.bias", block.ln_2.bias)]
    pairs += [("module.decoder.linear_pred.weight", head.decoder.classifier.weight),
              ("module.decoder.linear_pred.bias", head.decoder.classifier.bias)]
    return pairs
