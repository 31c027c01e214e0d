"""The application layer (notes 003/004 §LangChain, notes 000/002 §Agent), small and visible:

    llms.py        one protocol (invoke, stream, batch): LocalLLM, OpenAILLM (any OpenAI-compatible endpoint), FakeLLM
    cache.py       MemoryCache, SQLiteCache, RedisCache keyed by prompt + model + every generation option
    usage.py       UsageTracker: prompt / completion / total tokens per model, cache hits
    prompts.py     PromptTemplate, FewShotTemplate, ChatTemplate (variables checked)
    loaders.py     Document, load_folder (text / markdown), world_fact_documents
    splitters.py   split_recursive (separators, overlap), split_tokens, split_documents
    embeddings.py  BertEmbeddings (danlu's BERT on MiniLM), HashingEmbeddings (no model)
    stores.py      VectorStore: SQLite + exact cosine search (numpy, optionally FAISS), filters, MMR, delete
    retrieval.py   BM25Index, reciprocal rank fusion, vector / BM25 / hybrid retrievers, recall_at_k
    chains.py      LLMChain, pipeline, RagChain (answer + cited sources)
    tools.py       @tool (typed functions), the ast-only calculator, retriever_tool
    agents.py      ReActAgent, PlanAndExecute, reflect, collaborate (multi-agent)
    memory.py      WindowMemory (short-term), VectorMemory (long-term)
    tasks.py       arithmetic word problems from the embedded world

The commands (`danlu rag index DIR`, `danlu rag ask`, `danlu agent`) live in danlu/cli/app.py.

Only numpy and torch are needed; httpx (OpenAILLM), redis (RedisCache) and faiss (use_faiss=True) are optional and
imported where used. Every prompt a component sends is a module constant and is printed with verbose=True.
"""
