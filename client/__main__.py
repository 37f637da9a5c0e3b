from client.pipeline import main

main()
