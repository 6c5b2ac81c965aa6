// The peer's logits for given token ids: llama.cpp (its CPU backend) runs one batch over the ids and writes
// every position's logits as raw little-endian f32 [n_ids][n_vocab]. scripts/peer_accuracy.py builds it
// against a llama.cpp build and compares what it writes with transformers on the same ids, beside webllm_py's.
//   llamacpp_logits MODEL.gguf OUT.f32 ID,ID,...
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: llamacpp_logits MODEL.gguf OUT.f32 ID,ID,...\n");
        return 2;
    }
    std::vector<llama_token> ids;
    for (const char * p = argv[3]; *p;) {
        char * end;
        ids.push_back((llama_token) strtol(p, &end, 10));
        p = *end == ',' ? end + 1 : end;
        if (end == p && *p) {
            fprintf(stderr, "bad id list\n");
            return 2;
        }
    }
    const int n = (int) ids.size();
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) ((n + 255) / 256 * 256);
    cp.n_batch = cp.n_ubatch = (uint32_t) n;  // one batch: the prompt's matmuls, as a prefill
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "cannot make a context\n");
        return 1;
    }
    llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = ids[i];
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = n;
    if (llama_decode(ctx, b) != 0) {
        fprintf(stderr, "llama_decode failed\n");
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    FILE * f = fopen(argv[2], "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", argv[2]);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        fwrite(llama_get_logits_ith(ctx, i), sizeof(float), (size_t) n_vocab, f);
    }
    fclose(f);
    llama_batch_free(b);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
