// bsd-llama: llama.cpp decode timing on exactly the prompts (token ids) build_sd gets.
//
//   bsd-llama -m target.gguf [-md draft.gguf --gamma G] --prompts FILE [-t N] [-n MAX_NEW]
//             [--kv f32|f16] [--eos ID,...] [--ignore-eos] [--ctx 512] [--warmup N]
//
// FILE: one prompt per line, token ids separated by commas. The models are loaded and every
// prompt (or the first N) is generated once (warm-up); then each line "run" on stdin generates every prompt once
// more and prints one JSON line; "quit" (or EOF) ends. Greedy. Timing as build_sd's loop
// (build_sd/runtime/speculative.py): prefill (and the first token, which it yields) excluded;
// decode_s runs from after the first token to the last; tokens = tokens emitted after the first.
// gamma 0: one target call per token. gamma G: the draft proposes G tokens one by one, the
// target verifies [x, d1..dG] in one batch, the longest agreeing prefix plus the target's
// next token is kept, both caches are rolled back past it (the same algorithm as build_sd).
#include "llama.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using clk = std::chrono::steady_clock;

static double secs(clk::time_point a, clk::time_point b) {
    return std::chrono::duration<double>(b - a).count();
}

struct Model {
    llama_model * model = nullptr;
    llama_context * ctx = nullptr;
    llama_batch batch{};
    int n_vocab = 0;
};

static void die(const std::string & m) {
    fprintf(stderr, "bsd-llama: %s\n", m.c_str());
    exit(2);
}

static Model load(const std::string & path, int threads, int n_ctx, ggml_type kv) {
    Model m;
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    m.model = llama_model_load_from_file(path.c_str(), mp);
    if (!m.model) die("cannot load " + path);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = n_ctx;
    cp.n_ubatch = n_ctx;
    cp.n_seq_max = 1;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.type_k = kv;
    cp.type_v = kv;
    cp.no_perf = true;
    m.ctx = llama_init_from_model(m.model, cp);
    if (!m.ctx) die("cannot create a context for " + path);
    m.batch = llama_batch_init(n_ctx, 0, 1);
    m.n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(m.model));
    return m;
}

// run tokens at positions pos.. ; logits for all of them when all_logits, else the last only
static void eval(Model & m, const std::vector<llama_token> & toks, int pos, bool all_logits) {
    llama_batch & b = m.batch;
    b.n_tokens = (int) toks.size();
    for (size_t i = 0; i < toks.size(); i++) {
        b.token[i] = toks[i];
        b.pos[i] = pos + (int) i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = all_logits || i + 1 == toks.size();
    }
    if (llama_decode(m.ctx, b) != 0) die("llama_decode failed");
}

static llama_token argmax(Model & m, int i) {
    const float * l = llama_get_logits_ith(m.ctx, i);
    int best = 0;
    for (int v = 1; v < m.n_vocab; v++)
        if (l[v] > l[best]) best = v;
    return best;
}

struct Result {
    std::vector<llama_token> ids;
    double prefill_s = 0, decode_s = 0;
    int emitted = 0, accepted = 0, rejected = 0, iterations = 0;
};

static Result generate(Model & tgt, Model * dft, const std::vector<llama_token> & prompt, int gamma,
                       int max_new, const std::set<int> & eos, int n_ctx) {
    Result r;
    llama_memory_clear(llama_get_memory(tgt.ctx), true);
    if (dft) llama_memory_clear(llama_get_memory(dft->ctx), true);
    const bool use_draft = gamma > 0 && dft;
    auto t0 = clk::now();
    eval(tgt, prompt, 0, false);
    llama_token first = argmax(tgt, (int) prompt.size() - 1);
    if (use_draft) eval(*dft, prompt, 0, false);
    r.prefill_s = secs(t0, clk::now());
    r.ids.push_back(first);
    if (eos.count(first) || max_new <= 1) return r;
    int n = (int) prompt.size();
    int t_pos = n, d_pos = n;
    std::vector<llama_token> seq(prompt);
    seq.push_back(first);
    auto t_loop = clk::now();
    for (;;) {
        int remaining = max_new - (int) r.ids.size();
        int room = n_ctx - t_pos;
        if (remaining <= 0 || room < 1) break;
        int g = std::min(use_draft ? gamma : 0, std::min(remaining - 1, room - 1));
        std::vector<llama_token> drafts;
        if (g > 0) {
            std::vector<llama_token> pending(seq.begin() + d_pos, seq.end());
            eval(*dft, pending, d_pos, false);
            d_pos += (int) pending.size();
            llama_token x = argmax(*dft, (int) pending.size() - 1);
            drafts.push_back(x);
            for (int i = 1; i < g; i++) {
                eval(*dft, {x}, d_pos, false);
                d_pos += 1;
                x = argmax(*dft, 0);
                drafts.push_back(x);
            }
        }
        std::vector<llama_token> block{seq.back()};
        block.insert(block.end(), drafts.begin(), drafts.end());
        eval(tgt, block, t_pos, true);
        int n_acc = 0;
        llama_token nxt = argmax(tgt, 0);
        while (n_acc < g && nxt == drafts[n_acc]) {
            n_acc++;
            nxt = argmax(tgt, n_acc);
        }
        if (g > 0) {
            r.accepted += n_acc;
            r.rejected += (n_acc < g) ? 1 : 0;
        }
        r.iterations++;
        t_pos += 1 + n_acc;
        llama_memory_seq_rm(llama_get_memory(tgt.ctx), 0, t_pos, -1);
        if (use_draft) {
            d_pos = std::min(d_pos, t_pos);
            llama_memory_seq_rm(llama_get_memory(dft->ctx), 0, d_pos, -1);
        }
        std::vector<llama_token> nw(drafts.begin(), drafts.begin() + n_acc);
        nw.push_back(nxt);
        bool stop = false;
        for (llama_token t : nw) {
            if ((int) r.ids.size() >= max_new) { stop = true; break; }
            r.ids.push_back(t);
            seq.push_back(t);
            r.emitted++;
            if (eos.count(t)) { stop = true; break; }
        }
        if (stop) break;
    }
    r.decode_s = secs(t_loop, clk::now());
    return r;
}

int main(int argc, char ** argv) {
    std::string tgt_path, dft_path, prompts_path, kv = "f32";
    int threads = 1, max_new = 64, gamma = 0, n_ctx = 512, warmup = 0;
    bool ignore_eos = false;
    std::set<int> eos;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto val = [&]() -> std::string { if (i + 1 >= argc) die("missing value for " + a); return argv[++i]; };
        if (a == "-m") tgt_path = val();
        else if (a == "-md") dft_path = val();
        else if (a == "--prompts") prompts_path = val();
        else if (a == "-t") threads = atoi(val().c_str());
        else if (a == "-n") max_new = atoi(val().c_str());
        else if (a == "--gamma") gamma = atoi(val().c_str());
        else if (a == "--ctx") n_ctx = atoi(val().c_str());
        else if (a == "--warmup") warmup = atoi(val().c_str());
        else if (a == "--kv") kv = val();
        else if (a == "--ignore-eos") ignore_eos = true;
        else if (a == "--eos") {
            std::stringstream ss(val());
            std::string tok;
            while (std::getline(ss, tok, ',')) if (!tok.empty()) eos.insert(atoi(tok.c_str()));
        } else die("unknown argument " + a);
    }
    if (tgt_path.empty() || prompts_path.empty()) die("need -m and --prompts");
    if (gamma > 0 && dft_path.empty()) die("--gamma needs -md");
    std::vector<std::vector<llama_token>> prompts;
    {
        std::ifstream f(prompts_path);
        std::string line;
        while (std::getline(f, line)) {
            std::vector<llama_token> p;
            std::stringstream ss(line);
            std::string tok;
            while (std::getline(ss, tok, ',')) if (!tok.empty()) p.push_back(atoi(tok.c_str()));
            if (!p.empty()) prompts.push_back(p);
        }
    }
    if (prompts.empty()) die("no prompts in " + prompts_path);
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    ggml_type kvt = kv == "f16" ? GGML_TYPE_F16 : GGML_TYPE_F32;
    auto tl = clk::now();
    Model tgt = load(tgt_path, threads, n_ctx, kvt);
    Model dft;
    if (!dft_path.empty()) dft = load(dft_path, threads, n_ctx, kvt);
    if (!ignore_eos && eos.empty()) {
        const llama_vocab * v = llama_model_get_vocab(tgt.model);
        if (llama_vocab_eos(v) != LLAMA_TOKEN_NULL) eos.insert(llama_vocab_eos(v));
    }
    if (ignore_eos) eos.clear();
    Model * dp = dft_path.empty() ? nullptr : &dft;
    size_t n_warm = warmup > 0 ? std::min((size_t) warmup, prompts.size()) : prompts.size();
    for (size_t k = 0; k < n_warm; k++) generate(tgt, dp, prompts[k], gamma, max_new, eos, n_ctx);   // warm-up
    printf("{\"ready\": true, \"load_and_warmup_s\": %.3f, \"n_params\": %llu, \"model_bytes\": %llu}\n",
           secs(tl, clk::now()), (unsigned long long) llama_model_n_params(tgt.model),
           (unsigned long long) llama_model_size(tgt.model));
    fflush(stdout);
    std::string cmd;
    while (std::getline(std::cin, cmd)) {
        if (cmd == "quit") break;
        if (cmd != "run") continue;
        int tokens = 0, acc = 0, rej = 0, iters = 0;
        double dec = 0, pre = 0;
        std::ostringstream outs;
        for (size_t k = 0; k < prompts.size(); k++) {
            Result r = generate(tgt, dp, prompts[k], gamma, max_new, eos, n_ctx);
            tokens += r.emitted;
            dec += r.decode_s;
            pre += r.prefill_s;
            acc += r.accepted;
            rej += r.rejected;
            iters += r.iterations;
            outs << (k ? ", [" : "[");
            for (size_t j = 0; j < r.ids.size(); j++) outs << (j ? "," : "") << r.ids[j];
            outs << "]";
        }
        printf("{\"tokens\": %d, \"decode_s\": %.6f, \"prefill_s\": %.6f, \"accepted\": %d, \"rejected\": %d, "
               "\"iterations\": %d, \"outputs\": [%s]}\n", tokens, dec, pre, acc, rej, iters, outs.str().c_str());
        fflush(stdout);
    }
    llama_batch_free(tgt.batch);
    llama_free(tgt.ctx);
    llama_model_free(tgt.model);
    if (dp) { llama_batch_free(dft.batch); llama_free(dft.ctx); llama_model_free(dft.model); }
    llama_backend_free();
    return 0;
}
